# bench_e2e_smoke: runs `liaison-bench e2e` with a few hundred messages and
# checks that its JSON line parses and that nothing was lost, duplicated or
# refused, that both phases name the broker's threads with the CPU they
# used, the bytes it wrote to files and its commit log's syncs, and that
# --trace wrote a line per latency-phase message.
# Usage: cmake -DBENCH=liaison-bench -DPKI=dir -DTRACE=file -P check_e2e_smoke.cmake
include(${CMAKE_CURRENT_LIST_DIR}/bench_line.cmake)
run_bench_line(
  ARGS e2e --pki ${PKI} --publishers 2 --messages 150 --window 32
       --rate 200 --duration 1 --warmup 0.2 --timeout 30 --profile none --trace ${TRACE}
  KEYS msgs_per_s p50_ms p99_ms p999_ms lost dups received redacted_received threads lat_threads
       file_bytes_per_msg lat_file_bytes_per_msg log_syncs lat_log_syncs lat_log_sync_p50_ms lat_log_sync_max_ms)
if(NOT lost EQUAL 0 OR NOT dups EQUAL 0)
  message(FATAL_ERROR "lost ${lost}, dups ${dups}")
endif()
if(NOT received EQUAL 300)
  message(FATAL_ERROR "received ${received} of 300 in the throughput phase")
endif()
if(redacted_received LESS 1)
  message(FATAL_ERROR "no receiver got a redacted copy")
endif()
# The broker wrote at least each message's body to its files (the commit
# log) in both phases.
if(file_bytes_per_msg LESS 1000 OR lat_file_bytes_per_msg LESS 1000)
  message(FATAL_ERROR "file bytes a message: ${file_bytes_per_msg} and ${lat_file_bytes_per_msg}")
endif()
# The broker timed its commit log's syncs (its admin socket answered before
# and after each phase: else -1), and both phases publish (a sync at least).
if(log_syncs LESS 1 OR lat_log_syncs LESS 1)
  message(FATAL_ERROR "syncs reported by the broker: ${log_syncs} and ${lat_log_syncs}")
endif()
if(lat_log_sync_p50_ms LESS 0 OR lat_log_sync_max_ms LESS 0)
  message(FATAL_ERROR "latency phase syncs: p50 ${lat_log_sync_p50_ms} ms, max ${lat_log_sync_max_ms} ms")
endif()
# Cores by thread: both phases name the I/O threads and the store's writer;
# in the latency phase (a second long, where clock ticks add up) the I/O
# threads used some.
foreach(phase threads lat_threads)
  string(JSON io ERROR_VARIABLE jerr GET "${${phase}}" io)
  string(JSON writer ERROR_VARIABLE jerr2 GET "${${phase}}" store-writer)
  if(jerr OR jerr2)
    message(FATAL_ERROR "${phase} does not name the I/O threads and the writer: ${${phase}}")
  endif()
endforeach()
if(NOT io GREATER 0)
  message(FATAL_ERROR "the I/O threads used no CPU in the latency phase: ${lat_threads}")
endif()
# The trace: a header, then one line per message of the latency phase (200
# msgs/s for 1 s), each with both latencies (nothing was lost).
file(STRINGS ${TRACE} trace)
list(LENGTH trace n)
if(NOT n EQUAL 201)
  message(FATAL_ERROR "the trace has ${n} lines, not a header and 200 messages")
endif()
list(GET trace 0 header)
if(NOT header STREQUAL "publisher,seq,sched_ms,sched_ns,late_ms,ack_ms,e2e_ms")
  message(FATAL_ERROR "the trace's header is '${header}'")
endif()
list(REMOVE_AT trace 0)
foreach(line ${trace})
  if(NOT line MATCHES "^[0-9]+,[0-9]+,[0-9]+\\.[0-9]+,[0-9]+,[0-9]+\\.[0-9]+,[0-9]+\\.[0-9]+,[0-9]+\\.[0-9]+$")
    message(FATAL_ERROR "a trace line is not publisher,seq,sched_ms,sched_ns,late_ms,ack_ms,e2e_ms: '${line}'")
  endif()
endforeach()
