//! Signed adverts: which checkpoints a node serves, signed by its libp2p
//! identity so that nobody can advertise on another node's behalf.
//!
//! The signature is ed25519 over [`Advert::signing_bytes`] (a domain tag,
//! the signer's peer id and the encoded body, docs/protocol.md); the
//! verifier takes the public key from the peer id itself, so only peer ids
//! that embed their key (ed25519 ids do) can advertise.

use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey};
use statesync_proto::{Advert, SignedAdvert};

/// Signs `advert` with this node's identity. A key that cannot sign (an
/// ed25519 key always can) yields an empty signature, which never verifies.
pub fn sign(kp: &Keypair, advert: &Advert) -> SignedAdvert {
    let body = advert.encode();
    let msg = Advert::signing_bytes(&kp.public().to_peer_id().to_bytes(), &body);
    SignedAdvert {
        signature: kp.sign(&msg).unwrap_or_default(),
        body,
    }
}

/// The advert `sa` if `peer` signed it and it decodes; `None` otherwise.
pub fn verify(peer: &PeerId, sa: &SignedAdvert) -> Option<Advert> {
    let key = public_key(peer)?;
    let msg = Advert::signing_bytes(&peer.to_bytes(), &sa.body);
    if !key.verify(&msg, &sa.signature) {
        return None;
    }
    Advert::decode(&sa.body).ok()
}

/// The public key embedded in an identity-multihash peer id.
fn public_key(p: &PeerId) -> Option<PublicKey> {
    let mh: &libp2p::multihash::Multihash<64> = p.as_ref();
    if mh.code() != 0 {
        return None;
    }
    PublicKey::try_decode_protobuf(mh.digest()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use statesync_proto::AdvertEntry;

    #[test]
    fn signed_adverts_verify_only_for_their_signer_and_body() {
        let kp = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let advert = Advert {
            seq: 7,
            entries: vec![AdvertEntry {
                height: 10,
                root: statesync_proto::Hash([9; 32]),
                bytes: 1 << 20,
            }],
        };
        let sa = sign(&kp, &advert);
        let me = kp.public().to_peer_id();
        assert_eq!(verify(&me, &sa), Some(advert.clone()));
        // Another node cannot pass it off as its own, nor alter it.
        assert_eq!(verify(&other.public().to_peer_id(), &sa), None);
        let mut forged = sa.clone();
        if let Some(b) = forged.body.last_mut() {
            *b ^= 1;
        }
        assert_eq!(verify(&me, &forged), None);
    }
}
