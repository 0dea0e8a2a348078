"""The node's key management entity (KME): ETSI GS QKD 014 V1.1.1 and SKIP key delivery to SAEs.

Modules: :mod:`~agent.kme.etsi014` (requests, responses and key_IDs, pure), :mod:`~agent.kme.authz`
(who may get which keys, from the running 015 configuration, pure), :mod:`~agent.kme.store` (keys
waiting for their slave and the request journal, in the key store database, with group commit),
:mod:`~agent.kme.peer` (the KME-to-KME channel), :mod:`~agent.kme.relay` (trusted relay over VIRT
links), :mod:`~agent.kme.skip` (SKIP, the second front end) and :mod:`~agent.kme.server` (the HTTPS
server).

SKIP
----
SKIP (draft-cisco-skip-02, continued as draft-singh-skip-00), the API of Cisco's encryptors, is served
on the same port at the root (``/capabilities``, ``/key``, ``/key/{keyId}``, ``/entropy``; ``kme.skip``
turns it off). It is a front end only: an encryptor is an SAE (its certificate's CommonName,
``localSystemID``), ``remoteSystemID`` is the peer SAE, ``GET /key`` is an ``enc_keys`` of one key by
the master and ``GET /key/{keyId}`` a ``dec_keys`` by the slave, through the same
:meth:`KmeServer.new_keys` and :meth:`KmeServer.take_keys`, so everything below holds for SKIP keys
too. The keyId is the key_ID's 32 hexadecimal digits. See :mod:`agent.kme.skip`.

Identity and authorisation
--------------------------
Every connection is mutual TLS against the network's CA (:mod:`qsdn.pki`). An SAE is the CommonName
of its client certificate (:func:`qsdn.pki.sae_id_of`); a peer KME is the CommonName of its node
certificate, which must be the ``kme_id`` configured for that node in ``kme.peers``. Which SAE may get
which keys comes only from the CLIENT ``qkd_app`` entries in the running configuration
(:mod:`agent.kme.authz`): the master (``server_app_id``) calls ``enc_keys``/``status``, each slave
(``client_app_id``) calls ``dec_keys``; anything else is a 401.

Direct links: one drawing end per link
--------------------------------------
Both ends of a PHYS link hold the same key blocks. Keys for a request are bits taken from them, and
the two KMEs must take *the same* bits, exactly once. Both ends may serve masters at the same time
(an SAE at each end), so if each end drew on its own they would take the same bits for different
requests. qsdn therefore lets only one end draw: the end with the lower ``qkdn_id`` (as the emulated
driver's transmitter), with :meth:`agent.keystore.KeyStore.consume`. The other end never draws; it
consumes exactly the ranges it is told about (:meth:`agent.keystore.KeyStore.consume_ranges`), in any
order, so concurrent requests need no ordering between the two KMEs.

* Master at the drawing end: draw and journal the request (one transaction), send ``deliver`` (ranges
  and a SHA-256 digest of the key material) to the peer, which consumes the same ranges, checks the
  digest and keeps the keys for the slave; then answer the master.
* Master at the other end: journal the request, send ``draw``; the peer draws, keeps the keys for the
  slave and answers with the ranges and digest; consume the same ranges here, check the digest, answer.

Either way one round trip between the KMEs per request (shared with concurrent requests: the peer
channel batches), and every transaction is on disk before the SAE gets a key, so a crash or power cut
never hands out the same bits twice. A request's key_IDs follow from its first key_ID
(:func:`agent.kme.etsi014.new_request_id`), so the peers exchange one id per request and the slave's
keys are one row.

Exactly once, and what happens on failure
-----------------------------------------
``dec_keys`` returns a key once and erases it; the master's end never keeps key material (its journal
holds ranges only, and is gone when the request completes). If anything fails after bits were taken -
no answer, a refusal, a divergence (the digests differ: logged, raised as a CRITICAL 015 ``alarm``,
503 to the SAE) - the request's bits are recorded as *discarded* in the accounting at this end and an
``abort`` is retried until the peer answers; the peer erases its keys for the request and discards
the same ranges, and both ends end up having used up the same bits, each accounted for. A request
still pending when the agent stops is aborted at the next start.

Relaying over VIRT links
------------------------
A CLIENT application backed by a VIRT link is served by trusted relay (:mod:`agent.kme.relay`): the
master's node checks ``virt_bandwidth`` (a token bucket per VIRT link), draws a fresh random key and
sends it hop by hop along ``virt_next_hop`` with ``relay`` ops, one-time-padded on each hop with the key
of that hop's direct link (a PHYS link, or the VIRT key link of a repeater segment whose BBM92 key fills
it: :meth:`agent.kme.authz.Authorisation.hop_to`), taken exactly once at both ends as for direct links
(drawn by the sender when it is the hop's drawing end, else reserved at the receiver with a ``reserve``
op; a reserved pad is kept on disk, so it survives a restart, and erased and accounted as discarded if
its relay op never comes). Each relay unpads, checks the end-to-end digest, repads and forwards, and
answers only once the rest of the chain answered; the far node checks the end-to-end digest and keeps
the keys under the same key_IDs. Relays are authorised by the VIRT link's ``virt_prev_hop`` *and* the
INTERNAL applications the controller configures on every relay for each direct link (PHYS or key link)
of the path; the far end by its CLIENT application. Several ``virt_next_hop`` entries are a multicast
branch (the 015 model's meaning) and are refused, never reduced to the first.

Any failure at any hop (a node down or hung, a refusal, a divergence of a hop's pads or of the relayed
key) ends with every node of the path having recorded as discarded exactly the hop keys it took for the
request (accounting tag ``kme:<request_id>``), the far end holding no key, and the master's SAE getting
a 503 whose message names the hop and the cause: errors travel back hop by hop, and an ``abort``,
journalled on disk and retried until answered, travels forward to the far end (each node that gets one
passes it on over its outgoing hop). Per-hop timeouts shrink along the path by at most twice
``peer_timeout_s`` per hop, so an upstream node never gives up before its downstream one could have
answered (the formula is in :mod:`agent.kme.relay`). Divergences are logged and raised as CRITICAL 015
``alarm`` notifications by the node that detects them.

Limits
------
``max_SAE_ID_count`` is 0: ``additional_slave_SAE_IDs`` (key multicast) is refused with a 400. SKIP's
TLS PSK mode is not offered (certificates only). Relaying over a multicast VIRT link (several
``virt_next_hop``) is refused. Keys waiting for a slave whose CLIENT application is removed from running
are erased within a second and their bits recorded as discarded (:meth:`agent.kme.store.KmeStore.purge`);
that pair's journal entries no longer in flight are closed by aborting them at the peer.
"""

from agent.kme.server import KmeServer, KmeStats

__all__ = ["KmeServer", "KmeStats"]
