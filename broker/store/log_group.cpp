#include "broker/store/log_group.h"

#include <cstring>

namespace liaison::broker {
namespace {

constexpr uint8_t kVersion = 1;

class Writer {
 public:
  explicit Writer(std::string* out) : out_(out) {}
  void U8(uint8_t v) { out_->push_back(static_cast<char>(v)); }
  void U32(uint32_t v) { Fixed(v); }
  void U64(uint64_t v) { Fixed(v); }
  void I64(int64_t v) { U64(static_cast<uint64_t>(v)); }
  void Bytes(std::string_view s) {
    U32(static_cast<uint32_t>(s.size()));
    out_->append(s);
  }

 private:
  template <typename T>
  void Fixed(T v) {  // little-endian
    char b[sizeof(T)];
    for (size_t i = 0; i < sizeof(T); ++i) b[i] = static_cast<char>(v >> (8 * i));
    out_->append(b, sizeof(T));
  }
  std::string* out_;
};

// Reads what Writer wrote; any read past the end sets failed and returns
// zeros, and the caller checks failed once at the end (and before using a
// count to size anything).
class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  bool failed() const { return failed_; }
  bool done() const { return in_.empty(); }
  uint8_t U8() {
    if (!Need(1)) return 0;
    const auto v = static_cast<uint8_t>(in_[0]);
    in_.remove_prefix(1);
    return v;
  }
  uint32_t U32() { return Fixed<uint32_t>(); }
  uint64_t U64() { return Fixed<uint64_t>(); }
  int64_t I64() { return static_cast<int64_t>(U64()); }
  std::string_view Bytes() {
    const uint32_t n = U32();
    if (!Need(n)) return {};
    std::string_view v = in_.substr(0, n);
    in_.remove_prefix(n);
    return v;
  }
  std::string String() { return std::string(Bytes()); }
  // A count of items of at least min_bytes each: never more than the bytes
  // left could hold, so a corrupt count cannot make anyone allocate much.
  uint32_t Count(size_t min_bytes) {
    const uint32_t n = U32();
    if (failed_ || n > in_.size() / min_bytes) {
      failed_ = true;
      return 0;
    }
    return n;
  }

 private:
  template <typename T>
  T Fixed() {  // little-endian
    if (!Need(sizeof(T))) return 0;
    T v = 0;
    for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(static_cast<uint8_t>(in_[i])) << (8 * i);
    in_.remove_prefix(sizeof(T));
    return v;
  }
  bool Need(size_t n) {
    if (failed_ || in_.size() < n) {
      failed_ = true;
      return false;
    }
    return true;
  }
  std::string_view in_;
  bool failed_ = false;
};

void EncodeMessage(const StoredMessage& m, Writer& w) {
  w.I64(m.row);
  for (const std::string* f : {&m.sender, &m.message_id, &m.case_id, &m.message_type}) w.Bytes(*f);
  w.I64(m.tlp);
  for (const std::string* f : {&m.purpose, &m.agreement, &m.recipients}) w.Bytes(*f);
  w.I64(m.received_ms);
  w.I64(m.expires_ms);
  w.U8(m.want_reports ? 1 : 0);
  for (const std::string* f : {&m.publish_digest, &m.ack, &m.body.str()}) w.Bytes(*f);
  w.I64(m.recalled_ms);
}

StoredMessage DecodeMessage(Reader& r) {
  StoredMessage m;
  m.row = r.I64();
  for (std::string* f : {&m.sender, &m.message_id, &m.case_id, &m.message_type}) *f = r.String();
  m.tlp = static_cast<int>(r.I64());
  for (std::string* f : {&m.purpose, &m.agreement, &m.recipients}) *f = r.String();
  m.received_ms = r.I64();
  m.expires_ms = r.I64();
  m.want_reports = r.U8() != 0;
  for (std::string* f : {&m.publish_digest, &m.ack}) *f = r.String();
  m.body = r.String();
  m.recalled_ms = r.I64();
  return m;
}

}  // namespace

void EncodeLogGroup(const LogGroup& g, std::string* out) {
  Writer w(out);
  w.U8(kVersion);
  w.U32(static_cast<uint32_t>(g.records.size()));
  for (const LoggedRecord& r : g.records) w.Bytes(r.leaf);
  w.U32(static_cast<uint32_t>(g.batches.size()));
  for (const Batch& b : g.batches) {
    w.U8(b.new_message ? 1 : 0);
    if (b.new_message) EncodeMessage(*b.new_message, w);
    w.U32(static_cast<uint32_t>(b.new_deliveries.size()));
    for (const StoredDelivery& d : b.new_deliveries) {
      w.I64(d.id);
      w.Bytes(d.recipient);
      w.I64(d.message_row);
      w.U8(static_cast<uint8_t>(d.kind));
      w.U32(d.attempts);
      w.U8(d.named ? 1 : 0);
      w.Bytes(d.payload);
    }
    w.U32(static_cast<uint32_t>(b.finished.size()));
    for (const auto& [id, state] : b.finished) {
      w.I64(id);
      w.U8(static_cast<uint8_t>(state));
    }
    w.U32(static_cast<uint32_t>(b.attempts.size()));
    for (const auto& [id, n] : b.attempts) {
      w.I64(id);
      w.U32(n);
    }
    w.U32(static_cast<uint32_t>(b.drop_bodies.size()));
    for (int64_t row : b.drop_bodies) w.I64(row);
  }
  w.U32(static_cast<uint32_t>(g.recalls.size()));
  for (const auto& [row, ms] : g.recalls) {
    w.I64(row);
    w.I64(ms);
  }
  w.U32(static_cast<uint32_t>(g.prunes.size()));
  for (const LogGroup::Prune& p : g.prunes) {
    w.U64(p.after);
    w.U64(p.through);
  }
  w.U8(g.checkpoint_row ? 1 : 0);
  if (g.checkpoint_row) {
    w.U64(g.checkpoint_row->tree_size);
    w.I64(g.checkpoint_row->time_ms);
    w.Bytes(g.checkpoint_row->text);
  }
}

Result<LogGroup> DecodeLogGroup(std::string_view bytes) {
  Reader r(bytes);
  if (r.U8() != kVersion) return Status::Corruption("commit log entry: unknown version");
  LogGroup g;
  const uint32_t records = r.Count(4);
  g.records.reserve(records);
  for (uint32_t i = 0; i < records && !r.failed(); ++i) {
    std::string_view leaf = r.Bytes();
    if (r.failed()) break;
    auto record = audit::DecodeLeaf(leaf);
    if (!record.ok()) return record.status().Annotate("commit log entry: record " + std::to_string(i));
    LoggedRecord lr{std::move(record).value(), std::string(leaf), merkle::LeafHash(leaf)};
    g.records.push_back(std::move(lr));
  }
  const uint32_t batches = r.Count(1 + 5 * 4);
  g.batches.reserve(batches);
  for (uint32_t i = 0; i < batches && !r.failed(); ++i) {
    Batch b;
    if (r.U8() != 0) b.new_message = DecodeMessage(r);
    const uint32_t deliveries = r.Count(8 + 4 + 8 + 1 + 4 + 1 + 4);
    for (uint32_t k = 0; k < deliveries && !r.failed(); ++k) {
      StoredDelivery d;
      d.id = r.I64();
      d.recipient = r.String();
      d.message_row = r.I64();
      const uint8_t kind = r.U8();
      if (kind < 1 || kind > 3) return Status::Corruption("commit log entry: unknown delivery kind");
      d.kind = static_cast<DeliveryKind>(kind);
      d.attempts = r.U32();
      d.named = r.U8() != 0;
      d.payload = r.String();
      b.new_deliveries.push_back(std::move(d));
    }
    const uint32_t finished = r.Count(9);
    for (uint32_t k = 0; k < finished && !r.failed(); ++k) {
      const int64_t id = r.I64();
      const uint8_t state = r.U8();
      if (state < 1 || state > 4) return Status::Corruption("commit log entry: unknown delivery state");
      b.finished.emplace_back(id, static_cast<DeliveryState>(state));
    }
    const uint32_t attempts = r.Count(12);
    for (uint32_t k = 0; k < attempts && !r.failed(); ++k) {
      const int64_t id = r.I64();
      b.attempts.emplace_back(id, r.U32());
    }
    const uint32_t drops = r.Count(8);
    for (uint32_t k = 0; k < drops && !r.failed(); ++k) b.drop_bodies.push_back(r.I64());
    g.batches.push_back(std::move(b));
  }
  const uint32_t recalls = r.Count(16);
  for (uint32_t k = 0; k < recalls && !r.failed(); ++k) {
    const int64_t row = r.I64();
    g.recalls.emplace_back(row, r.I64());
  }
  const uint32_t prunes = r.Count(16);
  for (uint32_t k = 0; k < prunes && !r.failed(); ++k) {
    LogGroup::Prune p;
    p.after = r.U64();
    p.through = r.U64();
    g.prunes.push_back(p);
  }
  if (r.U8() != 0) {
    LogGroup::CheckpointRow c;
    c.tree_size = r.U64();
    c.time_ms = r.I64();
    c.text = r.String();
    g.checkpoint_row = std::move(c);
  }
  if (r.failed()) return Status::Corruption("commit log entry: truncated or malformed");
  if (!r.done()) return Status::Corruption("commit log entry: bytes left over");
  return g;
}

}  // namespace liaison::broker
