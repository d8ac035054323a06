// Strict YAML reading with positions (internal). A YamlReader collects every
// problem as a Diagnostic with file:line:column and keeps going, so a config
// or policy file reports all its errors in one run. Not thread-safe.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/diagnostic.h"

namespace liaison::yaml {

// Reads and parses a YAML file (refusing files over max_bytes). On failure
// appends a diagnostic and returns nothing. The file's bytes go to *text
// when given (for hashing).
std::optional<YAML::Node> LoadFile(const std::string& path, size_t max_bytes, Diagnostics* diags,
                                   std::string* text = nullptr);
// Parses YAML text; name is used in diagnostics.
std::optional<YAML::Node> Parse(const std::string& text, const std::string& name, Diagnostics* diags);

class Reader {
 public:
  Reader(std::string file, Diagnostics* diags) : file_(std::move(file)), diags_(diags) {}

  const std::string& file() const { return file_; }
  void Error(const YAML::Node& at, const std::string& message);
  void Warning(const YAML::Node& at, const std::string& message);

  // True when node is a map; reports every key not in allowed.
  bool ExpectMap(const YAML::Node& node, std::string_view what, std::initializer_list<std::string_view> allowed);
  bool ExpectMap(const YAML::Node& node, std::string_view what, const std::vector<std::string>& allowed);
  bool ExpectSequence(const YAML::Node& node, std::string_view what);

  // Scalars under key of map; nothing when absent (an error if required) or
  // of the wrong type (always an error).
  std::optional<std::string> String(const YAML::Node& map, const char* key, bool required = false);
  std::optional<int64_t> Int(const YAML::Node& map, const char* key, int64_t min, int64_t max,
                             bool required = false);
  std::optional<bool> Bool(const YAML::Node& map, const char* key, bool required = false);
  // A list of strings; a single string is accepted as a list of one.
  std::optional<std::vector<std::string>> StringList(const YAML::Node& map, const char* key,
                                                     bool required = false);
  // Scalar as a string, with an error if node is not a scalar.
  std::optional<std::string> Scalar(const YAML::Node& node, std::string_view what);

 private:
  void Add(Diagnostic::Severity sev, const YAML::Node& at, const std::string& message);
  std::string file_;
  Diagnostics* diags_;
};

}  // namespace liaison::yaml
