#include "common/diagnostic.h"

namespace liaison {

std::string Diagnostic::ToString() const {
  std::string s = file;
  if (line > 0) {
    s += ":" + std::to_string(line);
    if (column > 0) s += ":" + std::to_string(column);
  }
  s += severity == Severity::kError ? ": error: " : ": warning: ";
  s += message;
  return s;
}

bool HasErrors(const Diagnostics& diags) {
  for (const auto& d : diags) {
    if (d.severity == Diagnostic::Severity::kError) return true;
  }
  return false;
}

std::string FormatDiagnostics(const Diagnostics& diags) {
  std::string out;
  for (const auto& d : diags) {
    out += d.ToString();
    out += '\n';
  }
  return out;
}

}  // namespace liaison
