package fcm_test

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"github.com/herald-push/herald/fcm"
)

// TestNewSenderWithCredentials builds the production client, from a
// service-account key file, through the tuned transport wrapped in Google's
// authenticating one: the key is read and the project taken from it.
func TestNewSenderWithCredentials(t *testing.T) {
	t.Parallel()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	sa, _ := json.Marshal(map[string]string{
		"type": "service_account", "project_id": "herald-creds", "private_key_id": "k1",
		"private_key":  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email": "worker@herald-creds.iam.gserviceaccount.com", "client_id": "1",
		"token_uri": "http://127.0.0.1:1/token",
	})
	path := filepath.Join(t.TempDir(), "sa.json")
	if err := os.WriteFile(path, sa, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := fcm.NewSender(t.Context(), fcm.ClientConfig{CredentialsFile: path, Conns: 2}); err != nil {
		t.Fatalf("NewSender with a service-account key: %v", err)
	}
	if _, err := fcm.NewSender(t.Context(), fcm.ClientConfig{CredentialsFile: filepath.Join(t.TempDir(), "missing.json")}); err == nil {
		t.Fatal("NewSender with a missing key file: no error")
	}
}
