# liaison-bench: performance benchmarks (docs/benchmarks.md). Built always,
# not only with the tests, so a release build can be measured; one
# executable with a subcommand per benchmark (policy, later e2e, audit,
# flood, connections).
add_executable(liaison-bench
  ${CMAKE_CURRENT_LIST_DIR}/liaison_bench.cpp
  ${CMAKE_CURRENT_LIST_DIR}/policy_bench.cpp
  ${CMAKE_CURRENT_LIST_DIR}/audit_bench.cpp)
target_link_libraries(liaison-bench PRIVATE liaison_policy liaison_store liaison_client CLI11::CLI11 yaml-cpp)

if(LIAISON_BUILD_TESTS)
  # A small run that only checks the benchmark works and prints its line.
  add_test(NAME bench_policy_smoke
    COMMAND liaison-bench policy --agencies 50 --groups 10 --rules 200 --decisions 2000)
  set_tests_properties(bench_policy_smoke PROPERTIES PASS_REGULAR_EXPRESSION "\"median_ns\"" TIMEOUT 60)
  add_test(NAME bench_audit_smoke COMMAND liaison-bench audit --records 20000 --queries 20)
  set_tests_properties(bench_audit_smoke PROPERTIES PASS_REGULAR_EXPRESSION "\"append_per_s\"" TIMEOUT 120)
endif()
