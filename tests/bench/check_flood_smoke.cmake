# bench_flood_smoke: runs `liaison-bench flood` briefly, with a low rate limit
# so that the flood is refused within the run, and checks that its JSON line
# has the figures, that every message of the other agencies arrived and none
# was refused, and that every publish of the flooder was answered (queued,
# rate_limited or refused otherwise). No figure is compared with a target.
# Usage: cmake -DBENCH=liaison-bench -DPKI=dir -P check_flood_smoke.cmake
include(${CMAKE_CURRENT_LIST_DIR}/bench_line.cmake)
run_bench_line(
  ARGS flood --pki ${PKI} --publishers 2 --window 32 --rate 100 --duration 2 --warmup 0.2
       --rate-limit 100 --burst 100 --flood-factor 10 --timeout 30
  KEYS baseline_p50_ms baseline_p99_ms flood_p50_ms flood_p99_ms flood_attempted flood_rate_limited
       flood_queued flood_other_refused others_lost others_refused others_dups)
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
