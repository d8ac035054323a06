# bench_e2e_smoke: runs `liaison-bench e2e` with a few hundred messages and
# checks that its JSON line parses and that nothing was lost, duplicated or
# refused. Usage: cmake -DBENCH=liaison-bench -DPKI=dir -P check_e2e_smoke.cmake
execute_process(
  COMMAND ${BENCH} e2e --pki ${PKI} --publishers 2 --messages 150 --window 32
          --rate 200 --duration 1 --warmup 0.2 --timeout 30 --profile none
  OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
message(STATUS "stderr:\n${err}")
string(STRIP "${out}" out)
string(REGEX REPLACE ".*\n" "" line "${out}")  # the last line
message(STATUS "line: ${line}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "liaison-bench e2e exited with ${rc}")
endif()
string(JSON bench ERROR_VARIABLE jerr GET "${line}" bench)
if(jerr)
  message(FATAL_ERROR "the line is not JSON: ${jerr}")
endif()
foreach(key msgs_per_s p50_ms p99_ms p999_ms lost dups received redacted_received)
  string(JSON value ERROR_VARIABLE jerr GET "${line}" ${key})
  if(jerr)
    message(FATAL_ERROR "no ${key} in the line: ${jerr}")
  endif()
  set(${key} ${value})
endforeach()
if(NOT lost EQUAL 0 OR NOT dups EQUAL 0)
  message(FATAL_ERROR "lost ${lost}, dups ${dups}")
endif()
if(NOT received EQUAL 300)
  message(FATAL_ERROR "received ${received} of 300 in the throughput phase")
endif()
if(redacted_received LESS 1)
  message(FATAL_ERROR "no receiver got a redacted copy")
endif()
