"""What goes into a release: numbering candidates and release entries from the prepared cases.

The flows number and package; what each case contributes (its number, its
site's licence, its indication from the site or the site's clinical sheet) is
decided here, as plain functions on records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from curation.config import Config
from curation.model import ConvertedCase, PreparedCase
from curation.registry import NumberingCandidate
from release.assemble import ReleaseEntry


def numbering_candidates(
    config: Config, prepared: Sequence[PreparedCase], converted: Mapping[str, ConvertedCase]
) -> list[NumberingCandidate]:
    """The registry's candidates for the prepared cases (site order of the config, then PatientID, date, UID).

    Parameters
    ----------
    config
        The release configuration (its site order ranks the sites).
    prepared
        The cases ready for release.
    converted
        Study key -> the converted case each prepared case came from.

    Returns
    -------
    list of NumberingCandidate
        One per prepared case, in the order given.
    """
    rank = {site.id: i for i, site in enumerate(config.sites)}
    return [
        NumberingCandidate(
            site_rank=rank[p.site],
            site=p.site,
            PatientID=converted[p.key].PatientID,
            StudyDate=converted[p.key].StudyDate,
            StudyInstanceUID=p.StudyInstanceUID,
        )
        for p in prepared
    ]


def release_entries(
    config: Config,
    prepared: Sequence[PreparedCase],
    converted: Mapping[str, ConvertedCase],
    numbers: Mapping[str, int],
    indications: Mapping[tuple[str, str], str],
) -> list[ReleaseEntry]:
    """One :class:`~release.assemble.ReleaseEntry` per prepared case, by case number.

    Parameters
    ----------
    config
        The release configuration (site licences and indications).
    prepared
        The cases ready for release.
    converted
        Study key -> the converted case each prepared case came from.
    numbers
        StudyInstanceUID -> case number (from the registry).
    indications
        (site, StudyInstanceUID) -> the indication of a site's clinical sheet;
        a study not in it gets its site's ``indication``.

    Returns
    -------
    list of ReleaseEntry
        Sorted by case number.

    Raises
    ------
    KeyError
        When a prepared case has no number or no converted case.
    """
    sites = {site.id: site for site in config.sites}
    entries = (
        ReleaseEntry(
            number=numbers[p.StudyInstanceUID],
            prepared=p,
            converted=converted[p.key],
            indication=indications.get((p.site, p.StudyInstanceUID), sites[p.site].indication),
            license=sites[p.site].license,
        )
        for p in prepared
    )
    return sorted(entries, key=lambda e: e.number)
