// The store's signer thread (broker/store/signer_thread.h): Wait returns the
// checkpoint of the job just started, whether the thread signed it or the
// caller took it back because the thread had not started it.
#include "broker/store/signer_thread.h"

#include <catch2/catch.hpp>

#include <thread>

#include "tests/temp_dir.h"

using namespace liaison;

TEST_CASE("signer thread: each Wait returns the signature of the job started before it", "[store]") {
  test::TempDir dir;
  auto signer = audit::Signer::LoadOrCreate(dir / "audit-signing.key");
  REQUIRE(signer.ok());
  broker::SignerThread thread(signer->get(), "liaison/test");
  // Jobs back to back (the caller usually takes them back), and jobs with a
  // pause between Start and Wait (the thread usually signs them): Ed25519 is
  // deterministic, so either way the signature is the one the signer makes.
  for (int i = 0; i < 400; ++i) {
    merkle::Hash root;
    root.fill(static_cast<unsigned char>(i));
    const uint64_t size = 1000 + static_cast<uint64_t>(i);
    const int64_t time = 1767225600000 + i;
    thread.Start(size, root, time);
    if (i % 2 == 1) std::this_thread::sleep_for(std::chrono::microseconds(200));
    const audit::Checkpoint got = thread.Wait();
    const audit::Checkpoint want = (*signer)->Sign("liaison/test", size, root, time);
    REQUIRE(got.tree_size == size);
    REQUIRE(got.root == root);
    REQUIRE(got.time_ms == time);
    REQUIRE(got.signature == want.signature);
    REQUIRE(audit::VerifyCheckpoint(got, (*signer)->public_key_pem()).ok());
  }
}
