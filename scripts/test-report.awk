# Reads `go test -v` output and prints what the plain (non -v) run would, plus the tests that
# were skipped with their reasons, and a closing "N passed, N failed, N skipped" line (top-level
# tests). A failing test's output is printed whole; a passing one's is dropped.
/^=== (RUN|CONT|PAUSE|NAME) / { cur = $3; next }
/^ *--- (PASS|FAIL|SKIP): / {
	res = $2; name = $3
	top = ($0 ~ /^---/)
	if (res == "FAIL:") { printf "%s", buf[name]; print }
	if (res == "SKIP:") {
		reason = last[name]; sub(/^ +/, "", reason)
		skips = skips sprintf("  %s: %s\n", name, reason)
	}
	if (top) n[res]++
	delete buf[name]; delete last[name]
	next
}
/^(ok|FAIL|PASS$|panic:|\?)/ || cur == "" { print; next }
{ buf[cur] = buf[cur] $0 "\n"; last[cur] = $0 }
END {
	if (skips != "") { print "== skipped tests, and why"; printf "%s", skips }
	printf "%d passed, %d failed, %d skipped\n", n["PASS:"], n["FAIL:"], n["SKIP:"]
}
