// Names of wire enums as people and scripts write them: TLP labels as FIRST
// spells them ("AMBER+STRICT"), reason codes and outcomes in snake_case
// ("recipient_offline"), message types as the body's field name
// ("incident_report"). Stateless; thread-safe.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace liaison::v1 {
class Message;
}

namespace liaison::proto {

// Accepts "amber+strict", "AMBER+STRICT", "TLP:AMBER+STRICT", "amber_strict".
// Returns the liaison.v1.Tlp value.
Result<int> ParseTlp(std::string_view text);
// "CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED", or "UNSPECIFIED".
std::string TlpName(int tlp);

// liaison.v1.Reason without its prefix, lower case: "recipient_offline".
std::string ReasonName(int reason);
// liaison.v1.Outcome: "delivered", "queued", "refused".
std::string OutcomeName(int outcome);
// liaison.v1.DataCategory: "special_category".
std::string DataCategoryName(int category);

// "incident_report", "case_referral", "case_update", or "" when no body is set.
std::string MessageTypeName(const v1::Message& message);
// Every message type name, in schema order.
std::vector<std::string> MessageTypeNames();

}  // namespace liaison::proto
