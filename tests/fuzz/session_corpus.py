#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_session (tests/fuzz/corpus/session/).

Each seed is a sequence of the operations tests/fuzz/session_fuzz.cpp reads
(its header describes them); frames are written in protobuf text format and
encoded with protoc, so the seeds stay readable here. Run from anywhere:

    python3 tests/fuzz/session_corpus.py

Regression inputs (regression-*) are not written by this script; they stay
as the fuzzer found them.
"""
import os
import struct
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus", "session")

POLICE, SCHOOL, SOCIAL, YOUTH, AUDITOR, NO_AGENCY = range(6)
# Publish template recipients (a bitmask) and TLP values.
R_POLICE, R_SCHOOL, R_SOCIAL, R_YOUTH, R_AUDITOR, R_CORE, R_ALL, R_NOBODY = (1 << i for i in range(8))
CLEAR, GREEN, AMBER, AMBER_STRICT, RED = 1, 2, 3, 4, 5


def encode(text):
    """A Frame body from protobuf text format."""
    return subprocess.run(
        ["protoc", "--encode=liaison.v1.Frame", "-I", os.path.join(ROOT, "proto"), "liaison/v1/frames.proto"],
        input=text.encode(), capture_output=True, check=True).stdout


def with_len(kind, data):
    return bytes([kind]) + struct.pack(">H", len(data)) + data


def frame(text):
    return with_len(0, encode(text))


def frame_bytes(body):
    return with_len(0, body)


def raw(data):
    return with_len(1, data)


def hello(receive=False, take_over=False, version=None, credit=0):
    flags = (1 if receive else 0) | (2 if take_over else 0)
    if version is not None:
        flags |= 4 | (version << 3)
    return bytes([2, flags, credit])


def publish(recipients, tlp=AMBER, purpose=0, body=0, flags=0):
    """purpose: 0 safeguarding, 1 threat_assessment, 2 case_coordination,
    3 an invalid one. body: 0 incident report, 1 case referral (bits 2..4:
    consent, bits 3..5: legal basis), 2 case update. flags: 1 want_reports,
    2 forward an earlier message, 4 expires in 1.5 s, 8 reuse the last id,
    16 sender = self, 32 sender = social, 64/128 sharing agreement."""
    return bytes([3, recipients, tlp | (purpose << 3), body, flags])


def ack(which=0, tweak=0):
    return bytes([4, which, tweak])


def recall(which=0, reason_len=4):
    return bytes([5, which, reason_len])


SYNC = bytes([6])
SLOT = bytes([8])


def connect(agency):
    return bytes([7, agency])


def audit(a, b=0, c=0):
    return bytes([9, a, b, c])


HELLO_TEXT = 'hello { protocol_version: 1 client_name: "seed" }'
PUBLISH_TEXT = """publish {
  request_id: 7
  want_reports: true
  message {
    envelope {
      message_id: "0190f3b2-7c4e-7a1b-8c2d-3e4f5a6b7c8d"
      recipients: "school"
      recipients: "group:core"
      tlp: TLP_AMBER
      purpose: "safeguarding"
      case_id: "NS-2026-0142"
      created_at { seconds: 1767225600 }
    }
    incident_report {
      incident_type: INCIDENT_HATE_CRIME
      bias_motivations: BIAS_ANTISEMITIC
      description: "Graffiti on the synagogue wall."
      severity: SEVERITY_MEDIUM
      police_reference: "PR-1"
      persons { role: ROLE_WITNESS full_name: "J. Witness" notes: "saw it" }
    }
  }
}"""

SEEDS = {
    # The protocol as a client speaks it.
    "hello-publish": frame(HELLO_TEXT) + frame(PUBLISH_TEXT) + SYNC,
    "hello-publish-template": hello() + publish(R_SCHOOL | R_SOCIAL, flags=1) + SYNC,
    "receive-own-and-ack": hello(receive=True, credit=8) + publish(R_POLICE, flags=1) + SYNC + SYNC + ack() + SYNC,
    # police publishes, school receives a redacted, pseudonymised copy.
    "redacted-delivery": hello() + SLOT + hello(receive=True) + SLOT + publish(R_SCHOOL, flags=1) + SYNC + SLOT
    + SYNC + ack() + ack() + SYNC,
    "referral-to-youth-work": hello() + SLOT + connect(YOUTH) + hello(receive=True) + SLOT
    + publish(R_YOUTH | R_SOCIAL, tlp=RED, purpose=2, body=1 | (1 << 2)) + SYNC + SLOT + SYNC + ack(),
    "recall": hello() + publish(R_SCHOOL | R_SOCIAL | R_YOUTH, flags=1) + SYNC + recall() + SYNC + recall(0, 250)
    + SYNC,
    "recall-after-delivery": hello(receive=True) + publish(R_POLICE | R_SOCIAL) + SYNC + SYNC + ack() + SYNC
    + recall() + SYNC + SYNC + ack(1) + SYNC,
    "duplicate-and-forward": hello() + publish(R_SOCIAL) + SYNC + publish(R_SOCIAL, flags=8) + publish(R_SOCIAL, flags=2)
    + publish(R_SOCIAL, body=2, flags=8) + SYNC,
    "publish-refusals": hello() + publish(0) + publish(R_NOBODY | R_AUDITOR) + publish(R_ALL, tlp=0)
    + publish(R_SCHOOL, purpose=3) + publish(R_SOCIAL, flags=32) + publish(R_YOUTH, tlp=RED)
    + publish(R_SCHOOL, flags=128) + SYNC,
    "expiring": hello() + publish(R_YOUTH | R_SOCIAL, body=1 | (1 << 2), flags=4 | 1) + SYNC,
    "take-over": connect(SCHOOL) + hello(receive=True) + SLOT + hello(receive=True) + hello(receive=True, take_over=True)
    + SYNC + SLOT + SYNC,
    "audit-queries": connect(AUDITOR) + hello() + audit(1, 8 | 2, 10) + audit(1, 1 << 3, 0) + audit(2, 0, 50)
    + audit(2, 1, 50) + audit(0, 128, 1) + audit(0, 0, 1) + SYNC,
    "audit-not-auditor": hello() + audit(1) + audit(0, 255, 1) + SYNC,
    # Broken protocol.
    "first-frame-not-hello": frame(PUBLISH_TEXT) + hello() + SYNC,
    "second-hello": hello() + hello(receive=True) + SYNC,
    "bad-version": hello(version=2),
    "ack-not-receiving": hello() + ack(5, 1) + SYNC,
    "ack-unknown": hello(receive=True) + ack(200, 3) + SYNC,
    "ping-pong-error": hello() + frame("ping { nonce: 9 }") + frame("pong { nonce: 1 }")
    + frame('error { code: REASON_PROTOCOL_ERROR message: "client-side trouble" }') + SYNC
    + frame('error { code: REASON_SHUTTING_DOWN fatal: true }'),
    "broker-only-frames": hello() + frame("welcome { protocol_version: 1 }") + frame("deliver { delivery_id: 1 }")
    + frame("publish_ack { request_id: 1 }") + frame("consistency_proof { request_id: 1 }")
    + frame_bytes(bytes([0xa0, 0x06, 0x01])) + SYNC,
    "malformed-body": hello() + frame_bytes(b"\x0a\xff\xff\xff\xff\x0f"),
    "zero-length": hello() + raw(b"\x00\x00\x00\x00"),
    "oversize": hello() + raw(b"\x7f\xff\xff\xff"),
    "half-frame": hello() + raw(b"\x00\x00\x00\x40\x0a\x02"),
    "no-agency": connect(NO_AGENCY) + hello() + SYNC,
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print(f"{len(SEEDS)} seeds in {OUT}")


if __name__ == "__main__":
    main()
