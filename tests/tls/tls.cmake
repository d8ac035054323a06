# TLS configuration scan of the real broker binary: sslscan plus openssl
# s_client (protocols, suites, tickets/resumption, 0-RTT, no-certificate
# client, TLS 1.2 downgrade). Needs the Debian packages sslscan and openssl.
add_test(NAME tls_scan COMMAND bash ${CMAKE_SOURCE_DIR}/tests/tls/tls_scan_test.sh $<TARGET_FILE:liaison-broker>)
set_tests_properties(tls_scan PROPERTIES TIMEOUT 300)
