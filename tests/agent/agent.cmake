# liaison-agent tests (docs/agent.md): the configuration as a unit, and the
# real agent binary against an in-process broker over real TLS, including
# kill -9 while it sends and while it receives.
add_executable(agent_tests
  agent/agent_config_test.cpp
  agent/agent_test.cpp
  agent/agent_crash_test.cpp)
target_link_libraries(agent_tests PRIVATE liaison_test_support liaison_agent)
target_compile_definitions(agent_tests PRIVATE LIAISON_AGENT_BIN="$<TARGET_FILE:liaison-agent>")
add_dependencies(agent_tests liaison-agent)
catch_discover_tests(agent_tests EXTRA_ARGS --warn NoTests TEST_PREFIX "agent: " PROPERTIES ${INTEGRATION_PROPERTIES})
