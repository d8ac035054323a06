// Fuzz target: the broker's configuration parser.
#include <cstddef>
#include <cstdint>
#include <string>

#include "broker/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  liaison::Diagnostics diags;
  (void)liaison::broker::BrokerConfig::LoadText(std::string(reinterpret_cast<const char*>(data), size),
                                                "/tmp/fuzz/broker.yaml", &diags);
  for (const auto& d : diags) (void)d.ToString();
  return 0;
}
