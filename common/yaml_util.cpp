#include "common/detail/yaml_util.h"

#include <algorithm>
#include <charconv>

#include "common/files.h"

namespace liaison::yaml {

std::optional<YAML::Node> Parse(const std::string& text, const std::string& name, Diagnostics* diags) {
  try {
    YAML::Node root = YAML::Load(text);
    if (!root.IsDefined() || root.IsNull()) {
      diags->push_back({Diagnostic::Severity::kError, name, 0, 0, "the file is empty"});
      return std::nullopt;
    }
    return root;
  } catch (const YAML::Exception& e) {
    diags->push_back({Diagnostic::Severity::kError, name, e.mark.is_null() ? 0 : e.mark.line + 1,
                      e.mark.is_null() ? 0 : e.mark.column + 1, "YAML syntax: " + e.msg});
    return std::nullopt;
  } catch (const std::exception& e) {
    diags->push_back({Diagnostic::Severity::kError, name, 0, 0, std::string("cannot parse YAML: ") + e.what()});
    return std::nullopt;
  }
}

std::optional<YAML::Node> LoadFile(const std::string& path, size_t max_bytes, Diagnostics* diags,
                                   std::string* text_out) {
  auto text = ReadFile(path, max_bytes);
  if (!text.ok()) {
    diags->push_back({Diagnostic::Severity::kError, path, 0, 0, text.status().message()});
    return std::nullopt;
  }
  auto root = Parse(*text, path, diags);
  if (root && text_out) *text_out = std::move(text).value();
  return root;
}

void Reader::Add(Diagnostic::Severity sev, const YAML::Node& at, const std::string& message) {
  int line = 0, col = 0;
  if (at.IsDefined()) {
    const YAML::Mark m = at.Mark();
    if (!m.is_null()) {
      line = m.line + 1;
      col = m.column + 1;
    }
  }
  diags_->push_back({sev, file_, line, col, message});
}

void Reader::Error(const YAML::Node& at, const std::string& message) {
  Add(Diagnostic::Severity::kError, at, message);
}

void Reader::Warning(const YAML::Node& at, const std::string& message) {
  Add(Diagnostic::Severity::kWarning, at, message);
}

bool Reader::ExpectMap(const YAML::Node& node, std::string_view what,
                       std::initializer_list<std::string_view> allowed) {
  return ExpectMap(node, what, std::vector<std::string>(allowed.begin(), allowed.end()));
}

bool Reader::ExpectMap(const YAML::Node& node, std::string_view what, const std::vector<std::string>& allowed) {
  if (!node.IsMap()) {
    Error(node, std::string(what) + " must be a map of key: value");
    return false;
  }
  std::vector<std::string> seen;
  for (const auto& kv : node) {
    if (!kv.first.IsScalar()) {
      Error(kv.first, std::string("keys in ") + std::string(what) + " must be plain names");
      continue;
    }
    const std::string key = kv.first.Scalar();
    // yaml-cpp keeps both entries and lookups return the first: an appended
    // setting would be silently ignored.
    if (std::find(seen.begin(), seen.end(), key) != seen.end()) {
      Error(kv.first, "duplicate key '" + key + "' in " + std::string(what));
      continue;
    }
    seen.push_back(key);
    bool ok = false;
    for (const auto& a : allowed) ok = ok || key == a;
    if (!ok) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      Error(kv.first, "unknown key '" + key + "' in " + std::string(what) + " (expected one of: " + list + ")");
    }
  }
  return true;
}

bool Reader::ExpectSequence(const YAML::Node& node, std::string_view what) {
  if (!node.IsSequence()) {
    Error(node, std::string(what) + " must be a list");
    return false;
  }
  return true;
}

std::optional<std::string> Reader::Scalar(const YAML::Node& node, std::string_view what) {
  if (!node.IsScalar()) {
    Error(node, std::string(what) + " must be a single value, not a list or map");
    return std::nullopt;
  }
  return node.Scalar();
}

std::optional<std::string> Reader::String(const YAML::Node& map, const char* key, bool required) {
  const YAML::Node n = map[key];
  if (!n.IsDefined() || n.IsNull()) {
    if (required) Error(map, std::string("missing required key '") + key + "'");
    return std::nullopt;
  }
  auto v = Scalar(n, std::string("'") + key + "'");
  if (v && v->empty() && required) {
    Error(n, std::string("'") + key + "' must not be empty");
    return std::nullopt;
  }
  return v;
}

std::optional<int64_t> Reader::Int(const YAML::Node& map, const char* key, int64_t min, int64_t max,
                                   bool required) {
  auto s = String(map, key, required);
  if (!s) return std::nullopt;
  int64_t v = 0;
  const char* end = s->data() + s->size();
  auto [p, ec] = std::from_chars(s->data(), end, v);
  if (ec != std::errc() || p != end) {
    Error(map[key], std::string("'") + key + "' must be a whole number, not '" + *s + "'");
    return std::nullopt;
  }
  if (v < min || v > max) {
    Error(map[key], std::string("'") + key + "' must be between " + std::to_string(min) + " and " +
                        std::to_string(max) + ", not " + *s);
    return std::nullopt;
  }
  return v;
}

std::optional<bool> Reader::Bool(const YAML::Node& map, const char* key, bool required) {
  auto s = String(map, key, required);
  if (!s) return std::nullopt;
  if (*s == "true" || *s == "yes" || *s == "on") return true;
  if (*s == "false" || *s == "no" || *s == "off") return false;
  Error(map[key], std::string("'") + key + "' must be true or false, not '" + *s + "'");
  return std::nullopt;
}

std::optional<std::vector<std::string>> Reader::StringList(const YAML::Node& map, const char* key,
                                                           bool required) {
  const YAML::Node n = map[key];
  if (!n.IsDefined() || n.IsNull()) {
    if (required) Error(map, std::string("missing required key '") + key + "'");
    return std::nullopt;
  }
  std::vector<std::string> out;
  if (n.IsScalar()) {
    out.push_back(n.Scalar());
    return out;
  }
  if (!n.IsSequence()) {
    Error(n, std::string("'") + key + "' must be a list of values");
    return std::nullopt;
  }
  bool ok = true;
  for (const auto& item : n) {
    auto v = Scalar(item, std::string("each entry of '") + key + "'");
    if (v) {
      out.push_back(*v);
    } else {
      ok = false;
    }
  }
  if (!ok) return std::nullopt;
  return out;
}

}  // namespace liaison::yaml
