#include "proto/message_json.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/message.h>
#include <google/protobuf/util/json_util.h>

#include "proto/frame_codec.h"

namespace liaison::proto {

Status FromJson(std::string_view json, google::protobuf::Message* message, size_t max_bytes) {
  if (json.size() > max_bytes) {
    return Status::InvalidArgument("JSON input of " + std::to_string(json.size()) +
                                   " bytes exceeds the maximum of " + std::to_string(max_bytes));
  }
  google::protobuf::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = false;
  message->Clear();
  auto st = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(json.data(), json.size()), message, opts);
  if (!st.ok()) {
    return Status::InvalidArgument("not a valid " + message->GetDescriptor()->full_name() +
                                   " in JSON: " + std::string(st.message()));
  }
  return Status::Ok();
}

Result<std::string> ToJson(const google::protobuf::Message& message, bool pretty) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = pretty;
  opts.preserve_proto_field_names = false;
  std::string out;
  auto st = google::protobuf::util::MessageToJsonString(message, &out, opts);
  if (!st.ok()) return Status::Internal("JSON encoding failed: " + std::string(st.message()));
  if (pretty && !out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

Status FromBinary(std::string_view bytes, google::protobuf::Message* message) {
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                                            static_cast<int>(bytes.size()));
  in.SetRecursionLimit(kMaxNestingDepth);
  message->Clear();
  if (!message->MergePartialFromCodedStream(&in) || !in.ConsumedEntireMessage()) {
    return Status::InvalidArgument("not a valid binary " + message->GetDescriptor()->full_name());
  }
  message->DiscardUnknownFields();
  return Status::Ok();
}

}  // namespace liaison::proto
