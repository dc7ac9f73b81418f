package delivery

import "strings"

// NumSlots is the number of Redis Cluster hash slots.
const NumSlots = 16384

// KeySlot is the Redis Cluster hash slot of key: the CRC16 of its hash tag
// (what is between the first { and the next }, if not empty), or else of
// the whole key, modulo 16384. The edge groups shard channels by it.
func KeySlot(key string) uint16 {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	return crc16(key) % NumSlots
}

// crc16 is CRC-16/XMODEM (polynomial 0x1021, initial value 0), the checksum
// of Redis Cluster's key slots.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}
