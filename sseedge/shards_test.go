package sseedge

import "testing"

// keySlot must agree with Redis Cluster: the vectors are from the cluster
// specification's hash-tag rules, and 12739 is CRC16/XMODEM of "123456789"
// (0x31C3).
func TestKeySlot(t *testing.T) {
	cases := []struct {
		key  string
		want uint16
	}{
		{"123456789", 12739},
		{"{123456789}.followers", 12739},
		{"herald:{123456789}:events", 12739},
	}
	for _, c := range cases {
		if got := keySlot(c.key); got != c.want {
			t.Errorf("keySlot(%q) = %d, want %d", c.key, got, c.want)
		}
	}
	if keySlot("foo{}{123456789}") == 12739 {
		t.Error("an empty hash tag must hash the whole key")
	}
	if keySlot("{u:alice}:presence") != keySlot("herald:{u:alice}:events") {
		t.Error("keys with the same hash tag must share a slot")
	}
}

func TestSlotMapOwner(t *testing.T) {
	m := slotMap{{0, 5460, "a"}, {5461, 10922, "b"}, {10923, 16383, "c"}}
	for slot, want := range map[uint16]string{0: "a", 5460: "a", 5461: "b", 10922: "b", 16383: "c"} {
		if got := m.owner(slot); got != want {
			t.Errorf("owner(%d) = %q, want %q", slot, got, want)
		}
	}
	if got := (slotMap{{0, 100, "a"}}).owner(200); got != "" {
		t.Errorf("an unserved slot has owner %q", got)
	}
}
