# The Vault/OpenBao ACL policy keyturn's token needs, and nothing more.
#
#   bao policy write keyturn config/vault-policy.hcl      (or: vault policy write ...)
#
# It assumes the default mounts: transit at "transit/" and KV v2 at "secret/". If the
# backend sets transit_mount or kv_mount, replace those prefixes below.
# Attach it to keyturn's token, or to its AppRole role (token_policies = ["keyturn"]).

# Create keyturn's transit keys, read their public keys and type, delete them when removed.
path "transit/keys/+" {
  capabilities = ["create", "read", "update", "delete"]
}

# Set deletion_allowed=true right before deleting a removed key.
path "transit/keys/+/config" {
  capabilities = ["update"]
}

# List keys (reconciliation after a crash).
path "transit/keys" {
  capabilities = ["list"]
}

# Sign with a key.
path "transit/sign/+" {
  capabilities = ["update"]
}

# Authenticate lifecycle documents: HMAC with the transit key keyturn-state-mac (created by
# keyturn on first use through transit/keys/+ above). Whoever may write the KV path below
# but not this key cannot make a document keyturn acts on.
path "transit/hmac/keyturn-state-mac" {
  capabilities = ["update"]
}
path "transit/hmac/keyturn-state-mac/*" {
  capabilities = ["update"]
}

# Lifecycle documents of the key sets, written with check-and-set.
path "secret/data/keyturn/*" {
  capabilities = ["create", "read", "update"]
}

# Keep the token alive and check it (the "default" policy grants these too; a token created
# with no_default_policy needs them here).
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
