# CLI tests: run the built `liaison` binary as a process (local commands only,
# no broker), checking exit codes and output.
add_executable(cli_tests cli/policy_cli_test.cpp)
target_link_libraries(cli_tests PRIVATE catch_main)
target_compile_definitions(cli_tests PRIVATE
  LIAISON_CLI_BIN="$<TARGET_FILE:liaison>"
  LIAISON_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
add_dependencies(cli_tests liaison)
catch_discover_tests(cli_tests EXTRA_ARGS --warn NoTests TEST_PREFIX "cli: ")

# CLI tests against a broker (the real one, or a scripted one that sends
# what the real one never would): they need the shared dev PKI.
add_executable(cli_process_tests cli/receive_cli_test.cpp cli/audit_cli_test.cpp)
target_link_libraries(cli_process_tests PRIVATE liaison_test_support SQLite::SQLite3)
add_dependencies(cli_process_tests liaison-broker liaison)
catch_discover_tests(cli_process_tests EXTRA_ARGS --warn NoTests TEST_PREFIX "cli: " PROPERTIES ${INTEGRATION_PROPERTIES})
