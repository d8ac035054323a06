// An auditor's export fetched from the broker over mutual TLS: the audit
// log page by page (AuditQuery in export mode) written into a new SQLite
// file of the same shape as a local export (`audit_log` and `checkpoints`
// tables), plus a `hash_only` column. Records in the auditor's scope are
// carried in full, every field a column with the record's leaf hash (the
// leaf bytes the broker sends are their encoding and are not stored:
// `liaison audit verify` encodes the columns again); every other record is
// its leaf hash only (other columns empty, hash_only = 1), so the verifier
// still checks the whole tree and every checkpoint. No message bodies: the
// broker's audit log has none.
//
// Thread-safety: one export per call; the Client may be shared.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "client/client.h"
#include "common/status.h"

namespace liaison::client {

struct RemoteExportReport {
  uint64_t records = 0;      // rows written (the tree size of the export)
  uint64_t hash_only = 0;    // of which outside the auditor's scope
  uint64_t checkpoints = 0;  // checkpoints written
  uint64_t pages = 0;        // AuditQuery requests made (each one is recorded by the broker)
};

// Creates out_path (which must not exist) from the broker's log up to its
// newest checkpoint. progress, when set, is called after every page with
// (records written, tree size). On error the partial file is removed.
Status ExportRemote(Client& client, const std::string& out_path, RemoteExportReport* report,
                    const std::function<void(uint64_t, uint64_t)>& progress = nullptr);

}  // namespace liaison::client
