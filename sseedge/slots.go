package sseedge

import (
	"sort"
	"strings"
)

// slotMap is the cluster's slot ranges and their primaries, sorted.
type slotMap []slotRange

type slotRange struct {
	start, end uint16
	addr       string
}

func (m slotMap) empty() bool { return len(m) == 0 }

// owner returns the address of the primary that serves slot, or "".
func (m slotMap) owner(slot uint16) string {
	i := sort.Search(len(m), func(i int) bool { return m[i].end >= slot })
	if i < len(m) && m[i].start <= slot {
		return m[i].addr
	}
	return ""
}

// bySlot groups channels by their slot: a cluster refuses an SSUBSCRIBE or
// SUNSUBSCRIBE whose channels span slots.
func bySlot(channels []string) map[uint16][]string {
	out := make(map[uint16][]string)
	for _, ch := range channels {
		slot := keySlot(ch)
		out[slot] = append(out[slot], ch)
	}
	return out
}

// keySlot is the Redis Cluster slot of a key or shard channel: CRC16
// (XMODEM) of its hash tag, the part between the first { and the next },
// when that part is not empty, else of the whole key, modulo 16384.
func keySlot(key string) uint16 {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for k := 0; k < len(key); k++ {
		crc ^= uint16(key[k]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc % 16384
}
