package sseedge

import (
	"sort"

	"github.com/herald-push/herald/delivery"
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

// keySlot is the Redis Cluster slot of a key or shard channel.
func keySlot(key string) uint16 { return delivery.KeySlot(key) }
