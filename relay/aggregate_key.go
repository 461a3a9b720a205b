package relay

import (
	"encoding/binary"
	"math/bits"
)

// Key returns the aggregate's 64-bit key, the value schema.sql's
// outbox_aggregate_key(aggregate_type, aggregate_id) computes: PostgreSQL's
// hashtextextended of the id's bytes, seeded with that of the type's.
// outbox_lock takes the advisory lock of this key and records it in the
// rows' lock_keys, which is how the relay checks a row's ordering lock.
//
// hashtextextended hashes with the server's byte order; every platform
// PostgreSQL commonly runs on is little-endian, as this is. The store
// compares the two at start.
func (a Aggregate) Key() int64 {
	return int64(hashBytes([]byte(a.ID), hashBytes([]byte(a.Type), 0)))
}

// hashBytes is PostgreSQL's hash_bytes_extended (src/common/hashfn.c,
// Bob Jenkins' lookup3 with a 64-bit seed) for a little-endian server.
func hashBytes(k []byte, seed uint64) uint64 {
	a := 0x9e3779b9 + uint32(len(k)) + 3923095
	b, c := a, a
	if seed != 0 {
		a += uint32(seed >> 32)
		b += uint32(seed)
		a, b, c = mix(a, b, c)
	}
	for len(k) >= 12 {
		a += binary.LittleEndian.Uint32(k[0:])
		b += binary.LittleEndian.Uint32(k[4:])
		c += binary.LittleEndian.Uint32(k[8:])
		a, b, c = mix(a, b, c)
		k = k[12:]
	}
	// The last 0 to 11 bytes: a takes bytes 0-3, b 4-7 and c 8-10 shifted
	// up by one byte (its lowest byte is left for the length, in lookup3).
	var tail [12]byte
	copy(tail[:], k)
	a += binary.LittleEndian.Uint32(tail[0:])
	b += binary.LittleEndian.Uint32(tail[4:])
	c += binary.LittleEndian.Uint32(tail[8:]) << 8
	a, b, c = final(a, b, c)
	return uint64(b)<<32 | uint64(c)
}

// mix is lookup3's mix: six rounds, each one folding the next of a, b and
// c into the one after it.
func mix(a, b, c uint32) (uint32, uint32, uint32) {
	v := [3]uint32{a, b, c}
	for k, r := range [6]int{4, 6, 8, 16, 19, 4} {
		x, y, z := k%3, (k+1)%3, (k+2)%3
		v[x] -= v[z]
		v[x] ^= bits.RotateLeft32(v[z], r)
		v[z] += v[y]
	}
	return v[0], v[1], v[2]
}

// final is lookup3's final: seven rounds, each one mixing the previous
// word into the next, starting with b into c.
func final(a, b, c uint32) (uint32, uint32, uint32) {
	v := [3]uint32{a, b, c}
	for k, r := range [7]int{14, 11, 25, 16, 4, 14, 24} {
		x, y := (k+2)%3, (k+1)%3
		v[x] ^= v[y]
		v[x] -= bits.RotateLeft32(v[y], r)
	}
	return v[0], v[1], v[2]
}

// Partition returns the partition, from 0 to n-1, that publishes the
// aggregate's events when a table is shared among replicas in n
// partitions: schema.sql's outbox_partition, Key modulo n taken
// non-negative.
func (a Aggregate) Partition(n int) int {
	if n <= 1 {
		return 0
	}
	m := int64(n)
	return int(((a.Key() % m) + m) % m)
}
