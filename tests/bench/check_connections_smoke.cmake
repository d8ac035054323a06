# bench_connections_smoke: opens a few hundred idle sessions with
# `liaison-bench connections` and checks that its JSON line has the figures
# and that every session completed the handshake and Hello/Welcome and stayed
# open. The memory per session is not compared with its target here.
# Usage: cmake -DBENCH=liaison-bench -DPKI=dir -P check_connections_smoke.cmake
include(${CMAKE_CURRENT_LIST_DIR}/bench_line.cmake)
run_bench_line(
  ARGS connections --pki ${PKI} --sessions 300 --agencies 20 --settle 0.5 --hold 1 --timeout 60
  KEYS sessions_open rss_before rss_after bytes_per_session handshakes_per_s seconds closed_by_broker
       broker_sessions failed)
if(NOT sessions_open EQUAL 300 OR NOT failed EQUAL 0 OR NOT closed_by_broker EQUAL 0)
  message(FATAL_ERROR "open ${sessions_open} of 300, failed ${failed}, closed by the broker ${closed_by_broker}")
endif()
# The broker itself counts them (admin socket status).
if(broker_sessions LESS 300)
  message(FATAL_ERROR "the broker reports ${broker_sessions} sessions, not 300")
endif()
if(rss_before LESS_EQUAL 0 OR rss_after LESS_EQUAL 0)
  message(FATAL_ERROR "no RSS reading: before ${rss_before}, after ${rss_after}")
endif()
