// Package embedded runs Herald in one process, for trying it out, for
// heraldbench -self and for the integration tests: stand-ins for the
// services Herald depends on (an embedded Redis-protocol server with its
// clock, a Kafka wire-protocol broker with Herald's topics, the FCM
// emulator), and the wiring of a router and an SSE edge on one Redis. The
// three users build on it so that each sets Herald up the same way.
// Production runs cmd/router, cmd/sseedge and cmd/fcmworker instead.
package embedded
