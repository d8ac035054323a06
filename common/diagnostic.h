// A diagnostic about an input file: where (file:line:column) and what.
// Config and policy loaders collect all of them, so an operator sees every
// problem in one run rather than one per attempt.
#pragma once

#include <string>
#include <vector>

namespace liaison {

struct Diagnostic {
  enum class Severity { kError, kWarning };
  Severity severity = Severity::kError;
  std::string file;
  int line = 0;    // 1-based; 0 when the problem is the whole file
  int column = 0;  // 1-based; 0 when unknown
  std::string message;

  // "file:line:column: error: message", the format editors and CI jump to.
  std::string ToString() const;
};

using Diagnostics = std::vector<Diagnostic>;

bool HasErrors(const Diagnostics& diags);
// One diagnostic per line.
std::string FormatDiagnostics(const Diagnostics& diags);

}  // namespace liaison
