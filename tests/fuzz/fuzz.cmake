# libFuzzer targets (clang only): configure with -DLIAISON_FUZZ=ON and
# -DLIAISON_SANITIZE=address,undefined. scripts/ci-sanitizers.sh replays each
# target's corpus in tests/fuzz/corpus/<name>/ and fuzzes it for a while.
set(FUZZ_TARGETS frame json policy config audit audit_chunks session log_group commit_log redact)
foreach(name ${FUZZ_TARGETS})
  add_executable(fuzz_${name} ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/${name}_fuzz.cpp)
  target_compile_options(fuzz_${name} PRIVATE -fsanitize=fuzzer)
  target_link_options(fuzz_${name} PRIVATE -fsanitize=fuzzer)
  target_link_libraries(fuzz_${name} PRIVATE liaison_broker liaison_policy liaison_common liaison_proto)
endforeach()

# The session target talks to a real broker in its own process over mutual
# TLS: TestBroker from the integration tests' support code, and the dev PKI
# script, which it runs at start.
target_sources(fuzz_session PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/integration/test_support.cpp)
target_link_libraries(fuzz_session PRIVATE liaison_client SQLite::SQLite3)
target_compile_definitions(fuzz_session PRIVATE LIAISON_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
