// Internal to broker/store: one INSERT statement for many rows. Run once per
// row, a statement's fixed cost (starting and halting SQLite's VM, opening
// its cursors) was a quarter to a third of the inserts' time; the store's
// applier (audit records, messages) and the audit indexer insert in
// statements of many rows instead.
#pragma once

#include <string>
#include <string_view>

namespace liaison::broker {

// insert, an "INSERT ... VALUES (...)" of one row (with any clause after
// its tuple, such as an upsert's), with the tuple repeated for rows rows.
// Row k's parameters then follow row k-1's: k * (parameters of one row) + 1
// on.
inline std::string ManyRows(std::string_view insert, int rows) {
  const size_t open = insert.find("VALUES (") + 7;
  const size_t close = insert.find(')', open) + 1;
  const std::string_view tuple = insert.substr(open, close - open);
  std::string out(insert.substr(0, close));
  for (int i = 1; i < rows; ++i) out.append(",").append(tuple);
  out.append(insert.substr(close));
  return out;
}

}  // namespace liaison::broker
