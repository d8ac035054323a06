// `liaison policy ...` as a user runs it: the real binary in a child process,
// its stdout and stderr captured to files, its exit code checked.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

extern char** environ;

namespace {

const std::string kSource = LIAISON_SOURCE_DIR;
const std::string kPolicy = kSource + "/docs/examples/policy.yaml";
const std::string kCases = kSource + "/docs/examples/policy-tests.yaml";

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A scratch directory removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = "/tmp/liaison-cli-XXXXXX";
    if (!mkdtemp(tmpl.data())) FAIL("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    const std::string cmd = "rm -rf '" + path_ + "'";
    (void)std::system(cmd.c_str());
  }
  const std::string& path() const { return path_; }
  std::string Write(const std::string& name, const std::string& text) const {
    const std::string p = path_ + "/" + name;
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }

 private:
  std::string path_;
};

struct Run {
  int code = -1;
  std::string out, err;
};

Run Liaison(const TempDir& dir, std::vector<std::string> args) {
  args.insert(args.begin(), LIAISON_CLI_BIN);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string out = dir.path() + "/stdout", err = dir.path() + "/stderr";
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  REQUIRE(rc == 0);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  Run r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = ReadAll(out);
  r.err = ReadAll(err);
  return r;
}

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

const std::vector<std::string> kPermit = {"--from",          "police", "--to",  "school",    "--type",
                                          "incident_report", "--tlp",  "AMBER", "--purpose", "safeguarding"};

std::vector<std::string> Cat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace

TEST_CASE("policy check accepts the example policy, warning about the expired pilot") {
  TempDir dir;
  const Run r = Liaison(dir, {"policy", "check", kPolicy});
  INFO(r.out << r.err);
  CHECK(r.code == 0);
  CHECK(Contains(r.out, "OK, version "));
  CHECK(Contains(r.out, "warning: rule 'pilot-school-to-youth-work' can never match"));

  const Run j = Liaison(dir, {"--json", "policy", "check", kPolicy});
  CHECK(j.code == 0);
  CHECK(Contains(j.out, "\"ok\":true"));
  CHECK(Contains(j.out, "\"version\":\""));
  CHECK(Contains(j.out, "\"errors\":[]"));
}

TEST_CASE("policy check reports errors with file:line and exits 1") {
  TempDir dir;
  const std::string bad = dir.Write("bad.yaml",
                                    "version: 1\n"
                                    "agencies:\n"
                                    "  - id: police\n"
                                    "    name: Police\n"
                                    "    sector: law_enforcement\n"
                                    "    colour: blue\n"
                                    "rules: []\n");
  const Run r = Liaison(dir, {"policy", "check", bad});
  INFO(r.out << r.err);
  CHECK(r.code == 1);
  CHECK(Contains(r.out, bad + ":6:"));
  CHECK(Contains(r.out, "error:"));

  const Run j = Liaison(dir, {"--json", "policy", "check", bad});
  CHECK(j.code == 1);
  CHECK(Contains(j.out, "\"ok\":false"));
  CHECK(Contains(j.out, "\"version\":null"));
}

TEST_CASE("policy check warns about a permit shadowed by a forbid") {
  TempDir dir;
  const std::string p = dir.Write("shadow.yaml",
                                  "version: 1\n"
                                  "agencies:\n"
                                  "  - {id: a, name: A, sector: health}\n"
                                  "  - {id: b, name: B, sector: education}\n"
                                  "agreements:\n"
                                  "  - {id: ag, title: T, parties: [a, b], purposes: [safeguarding],\n"
                                  "     legal_basis: [public_task], valid_from: 2020-01-01, valid_until: 2099-12-31}\n"
                                  "rules:\n"
                                  "  - {id: p, effect: permit, agreement: ag, from: [a], to: [b], tlp: GREEN..AMBER}\n"
                                  "  - {id: f, effect: forbid, from: ['*'], to: [sector:education]}\n");
  const Run r = Liaison(dir, {"policy", "check", p});
  INFO(r.out << r.err);
  CHECK(r.code == 0);
  CHECK(Contains(r.out, "permit 'p' is fully shadowed by forbid 'f'"));
}

TEST_CASE("policy check warns about agencies no certificate can match") {
  TempDir dir;
  const std::string p = dir.Write("certs.yaml",
                                  "version: 1\n"
                                  "agencies:\n"
                                  "  - {id: a, name: A, sector: health, certificate: {subject: school, issuer: ca}}\n"
                                  "  - {id: b, name: B, sector: education,\n"
                                  "     certificate: {san_uri: 'urn:liaison:agency:bb'}}\n"
                                  "  - {id: c, name: C, sector: education}\n");
  const Run r = Liaison(dir, {"policy", "check", p});
  INFO(r.out << r.err);
  CHECK(r.code == 0);
  CHECK(Contains(r.out, "agency 'a': no certificate can match"));
  CHECK(Contains(r.out, "agency 'b' is matched by urn:liaison:agency:bb"));
  CHECK_FALSE(Contains(r.out, "agency 'c'"));
}

TEST_CASE("policy explain: exit 0 and details for a permit") {
  TempDir dir;
  const Run r = Liaison(dir, Cat({"policy", "explain", kPolicy}, kPermit));
  INFO(r.out << r.err);
  CHECK(r.code == 0);
  CHECK(Contains(r.out, "PERMIT"));
  CHECK(Contains(r.out, "incidents-to-schools"));
  CHECK(Contains(r.out, "incident_report.persons.full_name"));

  const Run j = Liaison(dir, Cat({"--json", "policy", "explain", kPolicy}, kPermit));
  INFO(j.out << j.err);
  CHECK(j.code == 0);
  CHECK(Contains(j.out, "\"decision\":\"permit\""));
  CHECK(Contains(j.out, "\"agreement\":\"local-prevention-2026\""));
  CHECK(Contains(j.out, "\"rules\":[\"incidents-to-schools\"]"));
  CHECK(Contains(j.out, "\"redact\":[\"criminal_offence\",\"incident_report.persons.notes\",\"special_category\"]"));
  CHECK(Contains(j.out, "\"pseudonymise\":[\"identifying\"]"));
  CHECK(Contains(j.out, "\"trace\":[{\"rule\":\"incidents-to-schools\",\"outcome\":\"matched\"}]"));
}

TEST_CASE("policy explain: exit 1 for a deny, 2 for usage errors") {
  TempDir dir;
  const Run r = Liaison(dir, {"--json", "policy", "explain", kPolicy, "--from", "health", "--to", "national-centre",
                              "--type", "case_referral", "--tlp", "AMBER", "--purpose", "threat_assessment"});
  INFO(r.out << r.err);
  CHECK(r.code == 1);
  CHECK(Contains(r.out, "\"decision\":\"deny\""));
  CHECK(Contains(r.out, "\"denial\":\"forbidden\""));
  CHECK(Contains(r.out, "\"rules\":[\"no-health-to-national\"]"));

  const Run red = Liaison(dir, {"policy", "explain", kPolicy, "--from", "police", "--to", "social", "--type",
                                "incident_report", "--tlp", "RED", "--purpose", "safeguarding", "--via-group"});
  CHECK(red.code == 1);
  CHECK(Contains(red.out, "DENY"));

  CHECK(Liaison(dir, Cat({"policy", "explain", kPolicy, "--at", "2026-13-01"}, kPermit)).code == 2);
  CHECK(Liaison(dir, {"policy", "explain", kPolicy, "--from", "police"}).code == 2);
  CHECK(Liaison(dir, {"policy", "explain", kPolicy, "--from", "nobody", "--to", "school", "--type", "incident_report",
                      "--tlp", "AMBER", "--purpose", "safeguarding"})
            .code == 2);
  CHECK(Liaison(dir, {"policy", "explain", kPolicy, "--from", "police", "--to", "school", "--type", "incident_report",
                      "--tlp", "PURPLE", "--purpose", "safeguarding"})
            .code == 2);
}

TEST_CASE("policy explain --at: the pilot agreement permitted in 2025") {
  TempDir dir;
  const Run r = Liaison(dir, {"policy", "explain", kPolicy, "--from", "school", "--to", "youth-ngo", "--type",
                              "incident_report", "--tlp", "GREEN", "--purpose", "safeguarding", "--at", "2025-06-01"});
  INFO(r.out << r.err);
  CHECK(r.code == 0);
  CHECK(Contains(r.out, "school-pilot-2025"));
}

TEST_CASE("policy test passes the example's own cases") {
  TempDir dir;
  const Run r = Liaison(dir, {"policy", "test", kPolicy, kCases});
  INFO(r.out << r.err);
  CHECK(r.code == 0);
  CHECK(Contains(r.out, "0 failed"));
  CHECK_FALSE(Contains(r.out, "FAIL"));
}

TEST_CASE("policy test reports a wrong expectation and exits 1") {
  TempDir dir;
  const std::string cases = dir.Write("cases.yaml",
                                      "cases:\n"
                                      "  - name: right\n"
                                      "    from: police\n    to: social\n    type: incident_report\n"
                                      "    tlp: AMBER\n    purpose: safeguarding\n    expect: permit\n"
                                      "  - name: wrong decision\n"
                                      "    from: police\n    to: youth-ngo\n    type: incident_report\n"
                                      "    tlp: GREEN\n    purpose: safeguarding\n    expect: permit\n"
                                      "  - name: wrong obligations\n"
                                      "    from: police\n    to: school\n    type: incident_report\n"
                                      "    tlp: AMBER\n    purpose: safeguarding\n    expect: permit\n"
                                      "    redact: [criminal_offence]\n");
  const Run r = Liaison(dir, {"policy", "test", kPolicy, cases});
  INFO(r.out << r.err);
  CHECK(r.code == 1);
  CHECK(Contains(r.out, "ok    right"));
  CHECK(Contains(r.out, "FAIL  wrong decision (" + cases + ":9): expected permit, got deny"));
  CHECK(Contains(r.out, "FAIL  wrong obligations"));
  CHECK(Contains(r.out, "redact: expected [criminal_offence], got [criminal_offence, incident_report.persons.notes, special_category]"));
  CHECK(Contains(r.out, "3 cases: 1 passed, 2 failed"));
}

TEST_CASE("policy test reports errors in the cases file with file:line") {
  TempDir dir;
  const std::string cases = dir.Write("cases.yaml",
                                      "cases:\n"
                                      "  - name: typo\n"
                                      "    from: police\n    to: social\n    type: incident_report\n"
                                      "    tlp: AMBER\n    purpose: safeguarding\n    expect: permit\n"
                                      "    expcet: deny\n");
  const Run r = Liaison(dir, {"policy", "test", kPolicy, cases});
  INFO(r.out << r.err);
  CHECK(r.code == 2);
  CHECK(Contains(r.err, cases + ":9:"));
  CHECK(Contains(r.err, "expcet"));
}

TEST_CASE("policy matrix lists permitted shares as CSV and HTML") {
  TempDir dir;
  const Run r = Liaison(dir, {"policy", "matrix", kPolicy, "--csv"});
  INFO(r.out << r.err);
  CHECK(r.code == 0);
  CHECK(r.out.rfind("sender,recipient,type,purposes,tlp,condition,agreement,redact,pseudonymise\n", 0) == 0);
  CHECK(Contains(r.out,
                 "\npolice,school,incident_report,safeguarding,CLEAR..AMBER,,local-prevention-2026,"
                 "criminal_offence incident_report.persons.notes special_category,identifying\n"));
  CHECK(Contains(r.out, "\nsocial,youth-ngo,case_referral,"));
  CHECK_FALSE(Contains(r.out, "\nhealth,national-centre,"));
  CHECK_FALSE(Contains(r.out, "\npolice,youth-ngo,incident_report,"));

  const Run h = Liaison(dir, {"policy", "matrix", kPolicy, "--html", "--purpose", "safeguarding"});
  CHECK(h.code == 0);
  CHECK(h.out.rfind("<!DOCTYPE html>", 0) == 0);
  CHECK(Contains(h.out, "<td>police</td><td>school</td><td>incident_report</td>"));
  CHECK_FALSE(Contains(h.out, "threat_assessment"));
}
