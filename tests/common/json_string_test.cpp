#include "common/json_string.h"

#include <catch2/catch.hpp>

using liaison::JsonString;

TEST_CASE("JsonString escapes what JSON requires and keeps UTF-8 as it is", "[json]") {
  CHECK(JsonString("") == "\"\"");
  CHECK(JsonString("a\"b\\c") == "\"a\\\"b\\\\c\"");
  CHECK(JsonString("l1\nl2\t\r") == "\"l1\\nl2\\t\\r\"");
  CHECK(JsonString(std::string("\x01\x1f", 2)) == "\"\\u0001\\u001f\"");
  CHECK(JsonString(std::string("nul\0end", 7)) == "\"nul\\u0000end\"");
  // Well-formed UTF-8 of each length, the largest code point included.
  CHECK(JsonString("Gr\xc3\xbc\xc3\x9f \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf") ==
        "\"Gr\xc3\xbc\xc3\x9f \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf\"");
}

TEST_CASE("JsonString turns each byte that is not well-formed UTF-8 into U+FFFD", "[json]") {
  struct Case {
    std::string in, out;
  } cases[] = {
      {"caf\xe9.json", "caf\\ufffd.json"},           // Latin-1
      {"\x80", "\\ufffd"},                           // a lone continuation byte
      {"\xc3", "\\ufffd"},                           // cut short at the end
      {"\xc3(", "\\ufffd("},                         // cut short by ASCII
      {"\xc0\xaf", "\\ufffd\\ufffd"},                // overlong '/'
      {"\xe0\x80\xaf", "\\ufffd\\ufffd\\ufffd"},     // overlong, three bytes
      {"\xed\xa0\x80", "\\ufffd\\ufffd\\ufffd"},     // a surrogate
      {"\xf4\x90\x80\x80", "\\ufffd\\ufffd\\ufffd\\ufffd"},  // past U+10FFFF
      {"\xf5\x80", "\\ufffd\\ufffd"},
      {"\xff\xfe", "\\ufffd\\ufffd"},
      {"\xe2\x82", "\\ufffd\\ufffd"},
      {"ok\xe2\x82\xac\xe2\x82", "ok\xe2\x82\xac\\ufffd\\ufffd"},
  };
  for (const auto& c : cases) {
    INFO(c.out);
    CHECK(JsonString(c.in) == "\"" + c.out + "\"");
  }
}
