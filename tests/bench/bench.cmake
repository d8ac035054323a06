# liaison-bench: performance benchmarks (docs/benchmarks.md). Built always,
# not only with the tests, so a release build can be measured; one
# executable with a subcommand per benchmark (policy, audit, e2e, flood,
# connections, redact).
add_executable(liaison-bench
  ${CMAKE_CURRENT_LIST_DIR}/liaison_bench.cpp
  ${CMAKE_CURRENT_LIST_DIR}/policy_bench.cpp
  ${CMAKE_CURRENT_LIST_DIR}/audit_bench.cpp
  ${CMAKE_CURRENT_LIST_DIR}/harness.cpp
  ${CMAKE_CURRENT_LIST_DIR}/e2e_bench.cpp
  ${CMAKE_CURRENT_LIST_DIR}/flood_bench.cpp
  ${CMAKE_CURRENT_LIST_DIR}/connections_bench.cpp
  ${CMAKE_CURRENT_LIST_DIR}/redact_bench.cpp)
target_link_libraries(liaison-bench PRIVATE liaison_policy liaison_store liaison_client CLI11::CLI11 yaml-cpp)
# Its clients allocate as an agent's do (with glibc's malloc a fifth of
# their CPU went to the allocator; docs/benchmarks.md, twelfth session).
if(LIAISON_JEMALLOC_LIBRARY)
  target_link_libraries(liaison-bench PRIVATE ${LIAISON_JEMALLOC_LIBRARY})
endif()
# e2e, flood and connections start the real broker and makes a dev PKI with certs/dev-pki.sh.
target_compile_definitions(liaison-bench PRIVATE
  LIAISON_SOURCE_DIR="${CMAKE_SOURCE_DIR}"
  LIAISON_BROKER_BIN="$<TARGET_FILE:liaison-broker>")
add_dependencies(liaison-bench liaison-broker)

if(LIAISON_BUILD_TESTS)
  # Small runs that only check the benchmarks work and print their line.
  add_test(NAME bench_policy_smoke
    COMMAND liaison-bench policy --agencies 50 --groups 10 --rules 200 --decisions 2000)
  set_tests_properties(bench_policy_smoke PROPERTIES PASS_REGULAR_EXPRESSION "\"median_ns\"" TIMEOUT 60)
  add_test(NAME bench_redact_smoke COMMAND liaison-bench redact --copies 200 --rounds 3)
  set_tests_properties(bench_redact_smoke PROPERTIES PASS_REGULAR_EXPRESSION "\"walk_ns\"" TIMEOUT 60)
  add_test(NAME bench_audit_smoke COMMAND liaison-bench audit --records 20000 --queries 20)
  set_tests_properties(bench_audit_smoke PROPERTIES PASS_REGULAR_EXPRESSION "\"append_per_s\"" TIMEOUT 120)
  # A few hundred messages through a real broker; the line must parse and
  # nothing may be lost. Not timed: no figure is checked.
  add_test(NAME bench_e2e_smoke
    COMMAND ${CMAKE_COMMAND} -DBENCH=$<TARGET_FILE:liaison-bench> -DPKI=${CMAKE_BINARY_DIR}/test-pki
            -DTRACE=${CMAKE_BINARY_DIR}/bench-e2e-smoke-trace.csv -P ${CMAKE_CURRENT_LIST_DIR}/check_e2e_smoke.cmake)
  set_tests_properties(bench_e2e_smoke PROPERTIES TIMEOUT 120 FIXTURES_REQUIRED test_pki)
  # The latency workload alone and beside an agency flooding at 10x a low
  # rate limit: nothing of the others lost or refused, every flood publish
  # answered, some of them rate_limited.
  add_test(NAME bench_flood_smoke
    COMMAND ${CMAKE_COMMAND} -DBENCH=$<TARGET_FILE:liaison-bench> -DPKI=${CMAKE_BINARY_DIR}/test-pki
            -P ${CMAKE_CURRENT_LIST_DIR}/check_flood_smoke.cmake)
  set_tests_properties(bench_flood_smoke PROPERTIES TIMEOUT 120 FIXTURES_REQUIRED test_pki)
  # 300 idle authenticated sessions: all open and still open at the end.
  add_test(NAME bench_connections_smoke
    COMMAND ${CMAKE_COMMAND} -DBENCH=$<TARGET_FILE:liaison-bench> -DPKI=${CMAKE_BINARY_DIR}/test-pki
            -P ${CMAKE_CURRENT_LIST_DIR}/check_connections_smoke.cmake)
  set_tests_properties(bench_connections_smoke PROPERTIES TIMEOUT 120 FIXTURES_REQUIRED test_pki)
endif()
