// Internal to broker/store: the derived audit index (schema 6), shared by
// its writer (audit_indexer.cpp) and the audit reader.
//
// The store's audit_log has no secondary index, so a commit only appends
// rows at the end of one B-tree. Queries by case id, message id and agency
// use this index instead: a separate SQLite file beside the store
// (`liaison.db-audit-index`), kept by a background thread up to a watermark
// (indexed_through) and rebuilt from the log whenever it does not match it.
// It holds nothing that is not in the log: for each case id, message id,
// sender and recipient of the records, rows (bucket, key, word, bits):
// key is a 64-bit hash of the value (with what it is, so a case id and an
// agency of the same name differ), word is seq >> 6 and bits has bit
// (seq & 63) set for each record of that word with that value, and bucket
// is seq >> kBucketBits. An agency in most records costs one row per 64 of
// them, not one per record (format 2: format 1 had a row per record and
// value, about seven per message, and kept the indexer busier than the
// audit log's own inserts). Ordering by bucket first keeps the rows of new
// records in the newest bucket, a small part of the B-tree that stays in
// the cache, instead of at a random place in a B-tree that grows with the
// log (what made appends slower as the log grew). A lookup seeks
// (bucket, key, word >= after's) in each bucket in turn.
//
// A key is only a candidate: the reader checks every row against the
// filter's real values, so a hash collision costs a row lookup and never
// changes a result. Records above the watermark are found by scanning
// them; the indexer is normally at most one commit behind.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

namespace liaison::broker::audit_index {

// 65,536 records a bucket: 153 buckets at 10,000,000 records (each lookup
// seeks every bucket of its seq range: at 16,384 records a bucket, a lookup
// of a rare case id took 3 ms at 3,000,000 records).
constexpr int kBucketBits = 16;

inline std::string PathFor(const std::string& store_path) { return store_path + "-audit-index"; }

enum class Field : char { kCase = 'c', kMessage = 'm', kAgency = 'a' };

// FNV-1a, 64 bits, over the field's tag and the value. Not a defence
// against chosen collisions, and it need not be: see above.
inline int64_t Key(Field field, std::string_view value) {
  uint64_t h = 14695981039346656037ull;
  auto mix = [&h](unsigned char c) {
    h ^= c;
    h *= 1099511628211ull;
  };
  mix(static_cast<unsigned char>(field));
  for (char c : value) mix(static_cast<unsigned char>(c));
  return static_cast<int64_t>(h);
}

inline int64_t Bucket(uint64_t seq) { return static_cast<int64_t>(seq >> kBucketBits); }

// A row's word covers 64 records; bit (seq & 63) of its bits is the record
// seq. (bits is a signed 64-bit integer to SQLite; bit 63 makes it negative.)
constexpr int kWordBits = 6;
inline int64_t Word(uint64_t seq) { return static_cast<int64_t>(seq >> kWordBits); }
inline int64_t Bit(uint64_t seq) { return static_cast<int64_t>(uint64_t{1} << (seq & 63)); }

// (bucket, key, seq): one value of one record, before the rows are formed.
using Entry = std::tuple<int64_t, int64_t, int64_t>;

// Appends the entries of record seq: its message id, case id, sender and
// recipient, those that are not empty.
inline void AddEntries(std::vector<Entry>* out, uint64_t seq, std::string_view message_id, std::string_view case_id,
                       std::string_view sender, std::string_view recipient) {
  const int64_t bucket = Bucket(seq), s = static_cast<int64_t>(seq);
  if (!message_id.empty()) out->emplace_back(bucket, Key(Field::kMessage, message_id), s);
  if (!case_id.empty()) out->emplace_back(bucket, Key(Field::kCase, case_id), s);
  if (!sender.empty()) out->emplace_back(bucket, Key(Field::kAgency, sender), s);
  if (!recipient.empty()) out->emplace_back(bucket, Key(Field::kAgency, recipient), s);
}

// ix2_meta 'format': the layout of ix2. An index file without it, or with
// another, is removed and rebuilt from the log.
constexpr int64_t kFormat = 2;

// ix2_meta: 'format' (kFormat), 'indexed_through' (records 1..N are
// indexed), 'through_hash' (the leaf hash of record N, so an index that
// belongs to another log, or to a log that was restored or truncated, is
// recognised and rebuilt). Format 1 had the tables ix_meta and ix: a broker
// of that format, started on a file of this one, finds no watermark of its
// own and indexes the log again from the start (it must not take this
// format's watermark for one of its own table ix).
constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS ix2_meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ix2(bucket INTEGER NOT NULL, k INTEGER NOT NULL, word INTEGER NOT NULL,
                               bits INTEGER NOT NULL, PRIMARY KEY(bucket, k, word)) WITHOUT ROWID;
)sql";

}  // namespace liaison::broker::audit_index
