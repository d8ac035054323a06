# bench_connections_smoke: opens a few hundred idle sessions with
# `liaison-bench connections` and checks that its JSON line has the figures
# and that every session completed the handshake and Hello/Welcome and stayed
# open. The memory per session is not compared with its target here.
# Usage: cmake -DBENCH=liaison-bench -DPKI=dir -P check_connections_smoke.cmake
execute_process(
  COMMAND ${BENCH} connections --pki ${PKI} --sessions 300 --agencies 20 --settle 0.5 --hold 1 --timeout 60
  OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
message(STATUS "stderr:\n${err}")
string(STRIP "${out}" out)
string(REGEX REPLACE ".*\n" "" line "${out}")  # the last line
message(STATUS "line: ${line}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "liaison-bench connections exited with ${rc}")
endif()
string(JSON bench ERROR_VARIABLE jerr GET "${line}" bench)
if(jerr)
  message(FATAL_ERROR "the line is not JSON: ${jerr}")
endif()
foreach(key sessions_open rss_before rss_after bytes_per_session handshakes_per_s seconds closed_by_broker
            broker_sessions failed)
  string(JSON value ERROR_VARIABLE jerr GET "${line}" ${key})
  if(jerr)
    message(FATAL_ERROR "no ${key} in the line: ${jerr}")
  endif()
  set(${key} ${value})
endforeach()
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
