"""Replaying the audit log against the state tables: where the two disagree, by name.

The chain proves the log was not edited; it says nothing about the tables beside it. Every
change of state is audited in the same transaction as the change, so the log replayed must
give back the state: the active pointer is the version of the last ``policy.activate``; each
stored policy's YAML hashes to its row's hash, which is the hash ``policy.put`` recorded
(and, for entries written since, the YAML text's own sha256); each activation row is the one
its entry recorded; each proposal's state is the ``to`` of its last ``proposal.*`` entry, its
hashes and gate verdict are the audited ones; each approval row is the audited decision
(approver, decision, reason, time); each evidence row and running canary is audited.

Pure functions over rows (anything with the columns as attributes) and ``AuditEntry``
records: ``state_problems`` for the whole store (``Store.verify_audit``) and
``proposal_problems`` for one proposal (the promotion's cheap check, in its transaction).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from contracts.documents import DocumentError
from policies.policy import load_policy
from store.audit import entry_hash_of
from store.records import AuditEntry

__all__ = ["STORE_ACTIONS", "StateRows", "decision_entry", "is_store_action",
           "proposal_problems", "state_problems"]

# Actions only the store's own transactions write (``Store.audit_append`` refuses them): an
# entry under one of these names is a change of the state tables, and the replay trusts it.
STORE_ACTIONS = frozenset({"policy.put", "policy.activate", "evidence.put", "rollout.advance",
                           "calibration.record", "anomalies.record", "api_key.create",
                           "api_key.revoke"})
_PROPOSAL = "proposal."
_DECISIONS = ("proposal.approved", "proposal.rejected")


def is_store_action(action: str) -> bool:
    return action in STORE_ACTIONS or action.startswith(_PROPOSAL)


@dataclass
class StateRows:
    """The rows of the state tables the replay reads."""

    policies: Sequence[Any] = ()
    active: Any | None = None
    activations: Sequence[Any] = ()
    proposals: Sequence[Any] = ()
    approvals: Sequence[Any] = ()
    evidence: Sequence[Any] = ()
    rollouts: Sequence[Any] = ()
    api_keys: Sequence[Any] = ()


def _short(value: Any) -> str:
    return value[:12] if isinstance(value, str) else str(value)


def _v(version: Any) -> str:
    return "none" if version is None else f"v{version}"


def _same(a: Any, b: Any) -> bool:
    if hasattr(a, "value"):  # an enum
        a = a.value
    if hasattr(b, "value"):
        b = b.value
    return a == b


def decision_entry(entries: Iterable[AuditEntry]) -> AuditEntry | None:
    """The entry that recorded a person's (or a rule's) decision on a proposal: a move to
    approved/rejected carrying ``decision`` (a gates' own rejection carries none)."""
    found = None
    for e in entries:
        if e.action in _DECISIONS and "decision" in e.payload:
            found = e
    return found


def _audited_state(entry: AuditEntry) -> str:
    to = entry.payload.get("to")
    return to if isinstance(to, str) else entry.action[len(_PROPOSAL):]


def proposal_problems(row: Any, entries: Sequence[AuditEntry], approval: Any | None,
                      *, check_hashes: bool = False) -> list[str]:
    """Where a proposal's row and its approval row disagree with its audit entries (those
    whose subject is the proposal id, in seq order). ``check_hashes`` also recomputes each
    entry's own hash (the promotion's check; the full verify walks the chain instead)."""
    pid = row.proposal_id
    problems: list[str] = []
    if check_hashes:
        for e in entries:
            recomputed = entry_hash_of(seq=e.seq, ts=e.ts, actor=e.actor, action=e.action,
                                       subject=e.subject, payload=e.payload,
                                       prev_hash=e.prev_hash)
            if recomputed != e.entry_hash:
                problems.append(f"proposal {pid}: audit entry #{e.seq} ({e.action}) does not "
                                "match its hash: it was altered")
    moves = [e for e in entries if e.action.startswith(_PROPOSAL)]
    if not moves:
        problems.append(f"proposal {pid}: row exists (state {row.state}) with no audit entry")
    else:
        created = next((e for e in moves if e.action == "proposal.proposed"), None)
        if created is None:
            problems.append(f"proposal {pid}: no proposal.proposed entry in the audit log")
        else:
            for key in ("candidate_version", "baseline_version", "candidate_hash",
                        "baseline_hash"):
                if key in created.payload and not _same(getattr(row, key), created.payload[key]):
                    problems.append(
                        f"proposal {pid}: its {key} is {_short(getattr(row, key))} but the "
                        f"audit log recorded {_short(created.payload[key])} (entry "
                        f"#{created.seq})")
        last = moves[-1]
        audited = _audited_state(last)
        if row.state != audited:
            problems.append(f"proposal {pid}: state is {row.state} but its last audited "
                            f"transition (entry #{last.seq}, {last.action}) is to {audited}")
        gated = [e for e in moves if e.action == "proposal.gated"]
        if gated:
            g = gated[-1].payload
            if "verdict" in g and not _same(row.gate_verdict, g["verdict"]):
                problems.append(f"proposal {pid}: gate verdict is {row.gate_verdict} but the "
                                f"audited one is {g['verdict']} (entry #{gated[-1].seq})")
            if not _same(row.evidence_hash, g.get("evidence_hash")):
                problems.append(
                    f"proposal {pid}: evidence bundle is {_short(row.evidence_hash)} but the "
                    f"audited one is {_short(g.get('evidence_hash'))} (entry #{gated[-1].seq})")
        elif row.gate_verdict is not None or row.evidence_hash is not None:
            problems.append(f"proposal {pid}: gate verdict {row.gate_verdict} is recorded but "
                            "no proposal.gated entry is in the audit log")
    problems += _approval_problems(pid, decision_entry(moves), approval)
    return problems


def _approval_problems(pid: str, audited: AuditEntry | None, approval: Any | None) -> list[str]:
    if approval is None:
        if audited is None:
            return []
        return [(f"approval of proposal {pid}: audit entry #{audited.seq} records "
                 f"{audited.payload['decision']} by {audited.actor} but no approval row "
                 "exists")]
    if audited is None:
        return [(f"approval of proposal {pid}: row exists ({approval.decision} by "
                 f"{approval.approver}) with no audit entry")]
    where = f"(entry #{audited.seq})"
    problems = []
    if approval.decision != audited.payload.get("decision"):
        problems.append(f"approval of proposal {pid}: decision {approval.decision} differs "
                        f"from the audited {audited.payload.get('decision')} {where}")
    if approval.approver != audited.actor:
        problems.append(f"approval of proposal {pid}: approver {approval.approver} differs "
                        f"from the audited {audited.actor} {where}")
    if "reason" in audited.payload and approval.reason != audited.payload["reason"]:
        problems.append(f"approval of proposal {pid}: reason {approval.reason!r} differs "
                        f"from the audited {audited.payload['reason']!r} {where}")
    if approval.decided_at != audited.ts:
        problems.append(f"approval of proposal {pid}: decided at "
                        f"{approval.decided_at.isoformat()} but audited at "
                        f"{audited.ts.isoformat()} {where}")
    return problems


def _policy_problems(rows: Sequence[Any], puts: dict[int, AuditEntry]) -> list[str]:
    problems = []
    for row in rows:
        name = f"policy v{row.version}"
        put = puts.get(row.version)
        found = []
        try:
            policy = load_policy(row.yaml_text)
        except DocumentError as err:
            found.append(f"{name}: stored YAML no longer loads ({err})")
            policy = None
        if policy is not None and policy.content_hash != row.content_hash:
            found.append(f"{name}: stored YAML hashes to {policy.content_hash[:12]} but its "
                         f"row says {row.content_hash[:12]}")
        if policy is not None and policy.metadata.version != row.version:
            found.append(f"{name}: stored YAML says version {policy.metadata.version}")
        if put is None:
            problems += [*found, f"{name}: row exists with no policy.put entry in the audit log"]
            continue
        recorded = put.payload.get("content_hash")
        if recorded is not None and recorded != row.content_hash:
            found.append(f"{name}: its row says hash {row.content_hash[:12]} but the audit log "
                         f"recorded {recorded[:12]} when it was stored (entry #{put.seq})")
        yaml_sha = put.payload.get("yaml_sha256")
        actual = hashlib.sha256(row.yaml_text.encode("utf-8")).hexdigest()
        if not found and yaml_sha is not None and yaml_sha != actual:
            found.append(f"{name}: stored YAML text has sha256 {actual[:12]} but the audit log "
                         f"recorded {yaml_sha[:12]} when it was stored (entry #{put.seq})")
        for key in ("parent_version", "author"):
            if key in put.payload and put.payload[key] != getattr(row, key):
                found.append(f"{name}: its {key} is {getattr(row, key)!r} but the audit log "
                             f"recorded {put.payload[key]!r} (entry #{put.seq})")
        problems += found
    held = {row.version for row in rows}
    for version, put in sorted(puts.items()):
        if version not in held:
            problems.append(f"policy v{version}: audit entry #{put.seq} stored it but the "
                            "policies table has no row")
    return problems


def _activation_problems(state: StateRows, activates: list[AuditEntry],
                         hashes: dict[int, str]) -> list[str]:
    problems = []
    last = activates[-1] if activates else None
    active = state.active
    if active is None and last is not None:
        problems.append(f"no active policy pointer, but the last activation in the audit log "
                        f"(entry #{last.seq}) made v{last.payload.get('version')} active")
    elif active is not None and last is None:
        problems.append(f"active policy pointer says v{active.version} but the audit log "
                        "records no activation")
    elif active is not None and last is not None:
        if active.version != last.payload.get("version"):
            problems.append(f"active policy pointer says v{active.version} but the last "
                            f"promote/rollback entry in the audit log (entry #{last.seq}) says "
                            f"{_v(last.payload.get('version'))}")
        audited_id = last.payload.get("activation_id")
        if audited_id is not None and active.activation_id != audited_id:
            problems.append(f"active policy pointer names activation #{active.activation_id} "
                            f"but the last activation in the audit log (entry #{last.seq}) is "
                            f"#{audited_id}")
    for e in activates:
        version, recorded = e.payload.get("version"), e.payload.get("content_hash")
        if version in hashes and recorded is not None and hashes[version] != recorded:
            problems.append(f"policy v{version}: activated with hash {recorded[:12]} (entry "
                            f"#{e.seq}) but its row says {hashes[version][:12]}")
    by_id = {e.payload["activation_id"]: e for e in activates
             if e.payload.get("activation_id") is not None}
    if by_id or not activates:  # logs that recorded activation ids (all the store writes)
        for row in state.activations:
            e = by_id.get(row.activation_id)
            if e is None:
                problems.append(f"activation #{row.activation_id} (v{row.version}) has no "
                                "audit entry")
                continue
            for key in ("version", "previous_version", "proposal_id"):
                if key in e.payload and e.payload[key] != getattr(row, key):
                    problems.append(f"activation #{row.activation_id}: its {key} is "
                                    f"{getattr(row, key)} but the audit log recorded "
                                    f"{e.payload[key]} (entry #{e.seq})")
        held = {row.activation_id for row in state.activations}
        for activation_id, e in sorted(by_id.items()):
            if activation_id not in held:
                problems.append(f"activation #{activation_id} (entry #{e.seq}) is missing from "
                                "the activations table")
    return problems


def _evidence_problems(rows: Sequence[Any], puts: dict[str, AuditEntry]) -> list[str]:
    problems = []
    for row in rows:
        name = f"evidence bundle {row.sha256[:12]}"
        actual = hashlib.sha256(row.json_text.encode("utf-8")).hexdigest()
        if actual != row.sha256:
            problems.append(f"{name}: its content hashes to {actual[:12]}")
        e = puts.get(row.sha256)
        if e is None:
            problems.append(f"{name}: row exists with no evidence.put entry in the audit log")
            continue
        for key in ("candidate_hash", "proposal_id"):
            if key in e.payload and e.payload[key] != getattr(row, key):
                problems.append(f"{name}: its {key} is {_short(getattr(row, key))} but the "
                                f"audit log recorded {_short(e.payload[key])} (entry #{e.seq})")
    return problems


def _rollout_problems(rows: Sequence[Any], by_subject: dict[str, list[AuditEntry]]) -> list[str]:
    problems = []
    for row in rows:
        pid = row.proposal_id
        entries = by_subject.get(pid, [])
        steps = [e for e in entries if e.action in ("proposal.canary", "rollout.advance")]
        if not any(e.action == "proposal.canary" for e in steps):
            problems.append(f"rollout of proposal {pid}: row exists ({row.state}, share "
                            f"{row.share:.0%}) with no proposal.canary entry in the audit log")
            continue
        if row.state != "running":
            continue
        last = steps[-1]
        share = last.payload.get("share" if last.action == "proposal.canary" else "to")
        step = last.payload.get("step")
        if share is not None and abs(float(row.share) - float(share)) > 1e-12:
            problems.append(f"rollout of proposal {pid}: share is {row.share:.0%} but the "
                            f"audited share is {float(share):.0%} (entry #{last.seq})")
        if step is not None and row.step != step:
            problems.append(f"rollout of proposal {pid}: step is {row.step} but the audited "
                            f"step is {step} (entry #{last.seq})")
        moves = [e for e in entries if e.action.startswith(_PROPOSAL)]
        if moves and _audited_state(moves[-1]) != "canary":
            problems.append(f"rollout of proposal {pid}: running, but the proposal's last "
                            f"audited transition (entry #{moves[-1].seq}) is to "
                            f"{_audited_state(moves[-1])}")
    return problems


def state_problems(entries: Iterable[AuditEntry], state: StateRows) -> list[str]:
    """Every disagreement between the audit log replayed and the state tables."""
    policy_puts: dict[int, AuditEntry] = {}
    activates: list[AuditEntry] = []
    evidence_puts: dict[str, AuditEntry] = {}
    by_subject: dict[str, list[AuditEntry]] = defaultdict(list)
    for e in entries:
        if e.action == "policy.put" and isinstance(e.payload.get("version"), int):
            policy_puts.setdefault(e.payload["version"], e)
        elif e.action == "policy.activate":
            activates.append(e)
        elif e.action == "evidence.put" and isinstance(e.payload.get("sha256"), str):
            evidence_puts[e.payload["sha256"]] = e
        if e.action.startswith(_PROPOSAL) or e.action == "rollout.advance":
            by_subject[e.subject].append(e)

    problems = _policy_problems(state.policies, policy_puts)
    hashes = {row.version: row.content_hash for row in state.policies}
    problems += _activation_problems(state, activates, hashes)
    approvals = {row.proposal_id: row for row in state.approvals}
    held = set()
    for row in state.proposals:
        held.add(row.proposal_id)
        problems += proposal_problems(row, by_subject.get(row.proposal_id, []),
                                      approvals.get(row.proposal_id))
    for pid, subject_entries in by_subject.items():
        created = next((e for e in subject_entries if e.action == "proposal.proposed"), None)
        if created is not None and pid not in held:
            problems.append(f"proposal {pid}: audit entry #{created.seq} created it but the "
                            "proposals table has no row")
    problems += _evidence_problems(state.evidence, evidence_puts)
    problems += _rollout_problems(state.rollouts, by_subject)
    problems += _api_key_problems(state.api_keys, entries)
    return problems


def _api_key_problems(rows: Sequence[Any], entries: Iterable[AuditEntry]) -> list[str]:
    """A key row must be the one its audited creation made (team, repos, purpose: what
    attribution trusts), and revoked exactly when the log says so: a key inserted or
    re-scoped by hand would let traffic be charged to another team."""
    created: dict[str, AuditEntry] = {}
    revoked: dict[str, AuditEntry] = {}
    for e in entries:
        if e.action in ("api_key.create", "api_key.revoke") and e.subject.startswith("api_key:"):
            key_id = e.subject.split(":", 1)[1]
            (created if e.action == "api_key.create" else revoked).setdefault(key_id, e)
    problems = []
    for row in rows:
        entry = created.get(row.key_id)
        if entry is None:
            problems.append(f"API key {row.key_id} (team {row.team}): row exists with no "
                            "api_key.create entry in the audit log")
            continue
        audited = (entry.payload.get("team"), list(entry.payload.get("repos") or []),
                   entry.payload.get("purpose"))
        try:
            repos = list(json.loads(row.repos_json or "[]"))
        except ValueError:
            repos = ["<unreadable>"]
        if (row.team, repos, row.purpose) != audited:
            problems.append(f"API key {row.key_id}: row says team {row.team}, repos {repos}, "
                            f"purpose {row.purpose} but audit entry #{entry.seq} created it "
                            f"for team {audited[0]}, repos {audited[1]}, purpose {audited[2]}")
        if (row.revoked_at is None) != (row.key_id not in revoked):
            said = "revoked" if row.key_id in revoked else "never revoked"
            problems.append(f"API key {row.key_id}: row says "
                            f"{'active' if row.revoked_at is None else 'revoked'} but the "
                            f"audit log says {said}")
    return problems
