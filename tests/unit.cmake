# Unit tests: one executable; each source sits in the folder of the unit it
# pins (tests/proto/ for proto/, tests/common/ for common/, ...).
add_executable(unit_tests
  proto/frame_codec_test.cpp
  proto/schema_annotation_test.cpp
  proto/validate_test.cpp
  common/uuid_test.cpp
  common/files_test.cpp
  common/json_string_test.cpp
  broker/config_test.cpp
  policy/policy_test.cpp)
target_link_libraries(unit_tests PRIVATE catch_main liaison_broker liaison_policy liaison_common liaison_proto)
# The example configuration and policy in docs/examples/ are loaded as tests.
target_compile_definitions(unit_tests PRIVATE LIAISON_UNIT_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
catch_discover_tests(unit_tests EXTRA_ARGS --warn NoTests TEST_PREFIX "unit: ")
# Redaction, pseudonyms and their keys (policy/redact.h, policy/pseudonym_keys.h).
target_sources(unit_tests PRIVATE
  policy/redact_test.cpp
  policy/redact_copy_test.cpp
  policy/pseudonym_keys_test.cpp)
target_sources(unit_tests PRIVATE policy/evaluate_test.cpp)
target_sources(unit_tests PRIVATE common/audit_record_test.cpp)
target_sources(unit_tests PRIVATE common/sha256_test.cpp)
target_sources(unit_tests PRIVATE broker/admission_test.cpp)
# The tally of refused connections (broker/detail/audit_events.h).
target_sources(unit_tests PRIVATE broker/refusal_tally_test.cpp)
# The store's commit log (broker/store/commit_log.h).
target_sources(unit_tests PRIVATE broker/commit_log_test.cpp)
# The store's filter of message ids (broker/store/id_filter.h).
target_sources(unit_tests PRIVATE broker/id_filter_test.cpp)
# Checkpoint signing (common/checkpoint.h).
target_sources(unit_tests PRIVATE common/checkpoint_test.cpp)
# Sync durations (common/latency_histogram.h).
target_sources(unit_tests PRIVATE common/latency_histogram_test.cpp)
# The broker's I/O threads, joining only while busy (broker/detail/io_pool.h):
# an executable of its own, so that the TSan build (scripts/ci-sanitizers.sh)
# runs it without building every unit test.
add_executable(io_pool_tests broker/io_pool_test.cpp)
target_link_libraries(io_pool_tests PRIVATE liaison_test_support)
catch_discover_tests(io_pool_tests EXTRA_ARGS --warn NoTests TEST_PREFIX "unit: ")
