package postgres

import (
	"bytes"
	"strconv"

	"github.com/outboxrelay/outboxrelay/relay"
)

// lockOf tells from a row's lock_keys (the comma-separated keys its
// transaction locked with outbox_lock, NULL for none) whether its
// aggregate, whose key is key, was among them.
func lockOf(lockKeys []byte, key int64) relay.Lock {
	if lockKeys == nil {
		return relay.LockMissing
	}
	var buf [20]byte
	want := strconv.AppendInt(buf[:0], key, 10)
	for len(lockKeys) > 0 {
		k := lockKeys
		if i := bytes.IndexByte(lockKeys, ','); i >= 0 {
			k, lockKeys = lockKeys[:i], lockKeys[i+1:]
		} else {
			lockKeys = nil
		}
		if bytes.Equal(k, want) {
			return relay.LockHeld
		}
	}
	return relay.LockMissing
}
