package retry

// Streak is a run of failures of one operation, so that a loop logs once
// when they start and once when they end, however many attempts lie
// between: a server down for an hour makes two log lines, not thousands.
// A failure that differs from the last one logged is new, and reported
// again. The zero Streak has no failures.
type Streak struct {
	last  string // the failure last reported
	count int    // failures since the last success
}

// Fail counts a failure and reports whether to log it: the first of the
// streak, or one whose text differs from the last logged.
func (s *Streak) Fail(err error) bool {
	s.count++
	if s.count == 1 || err.Error() != s.last {
		s.last = err.Error()
		return true
	}
	return false
}

// Succeed ends the streak, and returns how many failures it had: if any,
// the loop logs that it recovered.
func (s *Streak) Succeed() (failures int) {
	n := s.count
	s.count, s.last = 0, ""
	return n
}

// Failing reports whether the last attempt failed.
func (s *Streak) Failing() bool { return s.count > 0 }
