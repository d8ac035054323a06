# bench_flood_smoke: runs `liaison-bench flood` briefly, with a low rate limit
# so that the flood is refused within the run, and checks that its JSON line
# has the figures, that every message of the other agencies arrived and none
# was refused, and that every publish of the flooder was answered (queued,
# rate_limited or refused otherwise). No figure is compared with a target.
# Usage: cmake -DBENCH=liaison-bench -DPKI=dir -P check_flood_smoke.cmake
execute_process(
  COMMAND ${BENCH} flood --pki ${PKI} --publishers 2 --window 32 --rate 100 --duration 2 --warmup 0.2
          --rate-limit 100 --burst 100 --flood-factor 10 --timeout 30
  OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
message(STATUS "stderr:\n${err}")
string(STRIP "${out}" out)
string(REGEX REPLACE ".*\n" "" line "${out}")  # the last line
message(STATUS "line: ${line}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "liaison-bench flood exited with ${rc}")
endif()
string(JSON bench ERROR_VARIABLE jerr GET "${line}" bench)
if(jerr)
  message(FATAL_ERROR "the line is not JSON: ${jerr}")
endif()
foreach(key baseline_p50_ms baseline_p99_ms flood_p50_ms flood_p99_ms flood_attempted flood_rate_limited
            flood_queued flood_other_refused others_lost others_refused others_dups)
  string(JSON value ERROR_VARIABLE jerr GET "${line}" ${key})
  if(jerr)
    message(FATAL_ERROR "no ${key} in the line: ${jerr}")
  endif()
  set(${key} ${value})
endforeach()
if(NOT others_lost EQUAL 0 OR NOT others_refused EQUAL 0 OR NOT others_dups EQUAL 0)
  message(FATAL_ERROR "the other agencies: lost ${others_lost}, refused ${others_refused}, dups ${others_dups}")
endif()
math(EXPR answered "${flood_rate_limited} + ${flood_queued} + ${flood_other_refused}")
if(NOT answered EQUAL flood_attempted)
  message(FATAL_ERROR "the flooder attempted ${flood_attempted} publishes but ${answered} were answered")
endif()
# 10x a limit of 100/s with a burst of 100 for 2 s: the limiter must refuse.
if(flood_rate_limited LESS 1)
  message(FATAL_ERROR "the flooder was never rate_limited")
endif()
