"""Which role and epoch a site's database gets when `standbyctl db upgrade` creates its control row: a pure rule.

Roles come from the witness, never from the order of sites in the settings. `initial_role` decides from plain values
(the site, the role the operator asked for, the witness's state, what the site's database already holds) and
returns what to do or a Refusal whose reason is one sentence for the operator. It reads and writes nothing.

The rule, for a database with no control row:
- `--role primary` on an empty witness: the site becomes primary at epoch 1 and the witness is initialised with it.
- `--role primary` while the witness names another primary: refused, naming that primary and its epoch.
- no `--role` (or `--role standby`): a standby of the witness's primary at the witness's epoch; on an empty witness
  refused, telling the operator to say `--role primary` for the first site.
- the witness names this very site primary:
  - at epoch 1 the control row is recreated as primary at epoch 1 (the first setup did not finish: the witness was
    initialised, the database was not), with a caution;
  - at a later epoch refused: a promotion happened, so the site's data matters, and an empty database would be a
    primary with no data. Restore the database, or fail over to a standby and rebuild this site as a standby.
For a database that has a control row, the row is kept (roles change only through a runbook). The one exception is a
deployment older than the witness: an empty witness and a row that says primary at epoch 1, with `--role primary`,
adopts that site into the witness (KeepExisting.adopt).
"""
from __future__ import annotations

from dataclasses import dataclass

from cutover.witness.contract import WitnessState
from standby.domain.states import SiteRole

RUNBOOK_HINT = "roles change through a runbook (standbyctl runbook run switchover)"


@dataclass(frozen=True)
class InitialRole:
    """Create the control row with `role` at `epoch`, following `primary_site`. `initialise_witness`: the witness
    must first be initialised with this site (and must then name it, or the caller refuses). `note`: a caution to
    show, or None."""

    role: SiteRole
    epoch: int
    primary_site: str
    initialise_witness: bool = False
    note: str | None = None


@dataclass(frozen=True)
class KeepExisting:
    """The database already has a control row: leave it. `adopt`: initialise the empty witness with this site (a
    deployment older than the witness). `note`: a disagreement or hint to show, or None."""

    adopt: bool = False
    note: str | None = None


@dataclass(frozen=True)
class Refusal:
    """Nothing is created or changed; `reason` is one sentence for the operator."""

    reason: str


def initial_role(site_id: str, requested_role: SiteRole | None, witness: WitnessState, has_control_row: bool,
                 control_role: SiteRole | None = None, control_epoch: int | None = None,
                 ) -> InitialRole | KeepExisting | Refusal:
    """The rule in the module docstring. `control_role`/`control_epoch` describe the existing row (when there is
    one); they only matter for an empty witness or a disagreement note."""
    if has_control_row:
        return _existing(site_id, requested_role, witness, control_role, control_epoch)
    primary, epoch = witness.primary_site, witness.epoch
    if primary is None:
        if epoch > 0:  # the contract never leaves a used witness without a primary; refuse rather than guess
            return Refusal(f"the witness is at epoch {epoch} but names no primary; repair the witness before "
                           f"creating site {site_id}'s database")
        if requested_role is SiteRole.PRIMARY:
            return InitialRole(SiteRole.PRIMARY, 1, site_id, initialise_witness=True)
        return Refusal(f"the witness names no primary yet: create the first site with "
                       f"`standbyctl db upgrade --site {site_id} --role primary` (or another site as primary first)")
    if primary == site_id:
        return _rebuild_primary(site_id, requested_role, epoch)
    if requested_role is SiteRole.PRIMARY:
        return Refusal(f"the witness names site {primary} primary at epoch {epoch}; a second primary is refused: "
                       f"{RUNBOOK_HINT}. Create site {site_id} without --role to make it a standby of {primary}")
    return InitialRole(SiteRole.STANDBY, epoch, primary)


def _rebuild_primary(site_id: str, requested_role: SiteRole | None, epoch: int) -> InitialRole | Refusal:
    """The witness names `site_id` primary and its database has no control row."""
    if epoch > 1:
        return Refusal(f"the witness names site {site_id} primary at epoch {epoch}, and its database has no control "
                       f"row: creating it would make a primary with no data. Restore site {site_id}'s database "
                       f"from a backup, or fail over to a standby first and then rebuild {site_id} as its standby")
    if requested_role is SiteRole.STANDBY:
        return Refusal(f"the witness names site {site_id} primary at epoch {epoch}; it cannot be created as a "
                       f"standby: {RUNBOOK_HINT}")
    return InitialRole(SiteRole.PRIMARY, 1, site_id, note=(
        f"the witness already named site {site_id} primary at epoch 1 (a first setup that did not finish); its "
        f"control row is recreated. If {site_id} held data a standby now has, restore it from a backup instead"))


def _existing(site_id: str, requested_role: SiteRole | None, witness: WitnessState, control_role: SiteRole | None,
              control_epoch: int | None) -> KeepExisting | Refusal:
    if witness.primary_site is None and witness.epoch == 0:
        if control_role is SiteRole.PRIMARY and requested_role is SiteRole.PRIMARY:
            if control_epoch not in (None, 1):
                return Refusal(f"the witness is empty but site {site_id}'s database says primary at epoch "
                               f"{control_epoch}: the witness was lost or is the wrong one; restore it (or point "
                               f"witness_url at the right one) instead of starting it again at epoch 1")
            return KeepExisting(adopt=True)
        if control_role is SiteRole.PRIMARY:
            return KeepExisting(note=f"the witness is empty; record site {site_id} in it with "
                                     f"`standbyctl db upgrade --site {site_id} --role primary`")
        return KeepExisting(note="the witness names no primary yet")
    if requested_role is not None and control_role is not None and requested_role is not control_role:
        return KeepExisting(note=f"the existing control row says {control_role.value}; roles change only through "
                                 f"a runbook")
    return KeepExisting(note=disagreement(site_id, control_role, control_epoch, witness))


def disagreement(site_id: str, role: SiteRole | None, epoch: int | None, witness: WitnessState) -> str | None:
    """A sentence when a site's control row disagrees with the witness, else None (used by db upgrade and status)."""
    if role is None or witness.primary_site is None:
        return None
    if role is SiteRole.PRIMARY and witness.primary_site != site_id:
        return (f"site {site_id}'s control row says primary at epoch {epoch}, but the witness names "
                f"{witness.primary_site} primary at epoch {witness.epoch}: {site_id} must be fenced")
    if role is SiteRole.STANDBY and witness.primary_site == site_id:
        return (f"site {site_id}'s control row says standby, but the witness names it primary at epoch "
                f"{witness.epoch}: a promotion did not finish")
    # A standby keeps the epoch it last served under (a fenced old primary, or one never promoted): only a primary
    # must be at the witness's epoch.
    if role is SiteRole.PRIMARY and epoch is not None and epoch != witness.epoch:
        return f"site {site_id}'s control row is primary at epoch {epoch}, the witness at epoch {witness.epoch}"
    return None
