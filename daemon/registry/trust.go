package registry

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"aead.dev/minisign"
	"github.com/dimplugd/dimplugd/sdk-go/dimplug"
	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	bolt "go.etcd.io/bbolt"
)

// bucketTrust holds the publisher keys the operator trusts for signed
// packages: key id (16 uppercase hex digits) → TrustedKey as JSON. It is
// created on first use.
var bucketTrust = []byte("trust")

// TrustedKey is a publisher key the operator trusts.
type TrustedKey struct {
	KeyID     string    `json:"key_id"`
	PublicKey string    `json:"public_key"` // minisign base64 form
	Comment   string    `json:"comment"`
	AddedAt   time.Time `json:"added_at"`
}

// Key decodes the public key.
func (k TrustedKey) Key() (minisign.PublicKey, error) {
	var pk minisign.PublicKey
	err := pk.UnmarshalText([]byte(k.PublicKey))
	return pk, err
}

// ParsePublicKey reads a minisign public key: the base64 line alone, or a
// minisign .pub file's text (an untrusted comment line, then the key).
func ParsePublicKey(text string) (minisign.PublicKey, error) {
	var pk minisign.PublicKey
	if err := pk.UnmarshalText([]byte(strings.TrimSpace(text))); err != nil {
		return pk, invalidf("not a minisign public key: %v", err)
	}
	return pk, nil
}

// AddTrustedKey trusts the minisign public key text with comment; adding a
// key again replaces its comment.
func (s *Store) AddTrustedKey(text, comment string) (TrustedKey, error) {
	pk, err := ParsePublicKey(text)
	if err != nil {
		return TrustedKey{}, err
	}
	k := TrustedKey{KeyID: dimplug.KeyID(pk.ID()), PublicKey: pk.String(), Comment: comment, AddedAt: now()}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketTrust)
		if err != nil {
			return err
		}
		data, err := json.Marshal(k)
		if err != nil {
			return err
		}
		return b.Put([]byte(k.KeyID), data)
	})
	if err != nil {
		return TrustedKey{}, fmt.Errorf("trust key %s: %w", k.KeyID, err)
	}
	return k, nil
}

// TrustedKeys lists the trusted keys by key id.
func (s *Store) TrustedKeys() ([]TrustedKey, error) {
	var keys []TrustedKey
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTrust)
		if b == nil {
			return nil
		}
		return b.ForEach(func(id, v []byte) error {
			var k TrustedKey
			if err := json.Unmarshal(v, &k); err != nil {
				return fmt.Errorf("trusted key %s: %w", id, err)
			}
			keys = append(keys, k)
			return nil
		})
	})
	slices.SortFunc(keys, func(a, b TrustedKey) int { return strings.Compare(a.KeyID, b.KeyID) })
	return keys, err
}

// RemoveTrustedKey stops trusting the key with this id (case does not
// matter); an unknown id is ErrNotFound's class.
func (s *Store) RemoveTrustedKey(id string) error {
	id = strings.ToUpper(strings.TrimSpace(id))
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTrust)
		if b == nil || b.Get([]byte(id)) == nil {
			return errdefs.New(errdefs.ErrNotFound, fmt.Sprintf("key %s is not trusted (dimplugctl trust ls)", id))
		}
		return b.Delete([]byte(id))
	})
}

// CreateUpload creates an empty temporary file in the staging directory
// for a package being received (see the daemon's Control.installStream).
// The caller removes it; Open removes any left by a crash.
func (s *Store) CreateUpload() (*os.File, error) {
	return os.CreateTemp(filepath.Join(s.dir, stagingDir), "upload-*.dimplug")
}
