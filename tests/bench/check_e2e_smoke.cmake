# bench_e2e_smoke: runs `liaison-bench e2e` with a few hundred messages and
# checks that its JSON line parses and that nothing was lost, duplicated or
# refused. Usage: cmake -DBENCH=liaison-bench -DPKI=dir -P check_e2e_smoke.cmake
include(${CMAKE_CURRENT_LIST_DIR}/bench_line.cmake)
run_bench_line(
  ARGS e2e --pki ${PKI} --publishers 2 --messages 150 --window 32
       --rate 200 --duration 1 --warmup 0.2 --timeout 30 --profile none
  KEYS msgs_per_s p50_ms p99_ms p999_ms lost dups received redacted_received)
if(NOT lost EQUAL 0 OR NOT dups EQUAL 0)
  message(FATAL_ERROR "lost ${lost}, dups ${dups}")
endif()
if(NOT received EQUAL 300)
  message(FATAL_ERROR "received ${received} of 300 in the throughput phase")
endif()
if(redacted_received LESS 1)
  message(FATAL_ERROR "no receiver got a redacted copy")
endif()
