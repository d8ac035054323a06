// JSON form of messages and frames through protobuf's JSON mapping, so
// people can write messages by hand (docs/messages.md). Parsing is strict:
// unknown fields and bad enum names are errors with the parser's position.
// Stateless; thread-safe.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace google::protobuf {
class Message;
}

namespace liaison::proto {

// Parses JSON into message (any generated type). Input larger than
// max_bytes is refused before parsing.
Status FromJson(std::string_view json, google::protobuf::Message* message, size_t max_bytes = 4 * 1024 * 1024);

// JSON with the proto field names in lowerCamelCase; pretty adds newlines
// and indentation, otherwise one line (JSON Lines friendly).
Result<std::string> ToJson(const google::protobuf::Message& message, bool pretty);

// Parses the binary wire form with the nesting limit.
Status FromBinary(std::string_view bytes, google::protobuf::Message* message);

}  // namespace liaison::proto
