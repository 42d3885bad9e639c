"""Org-structure change sets (issue 10): a declarative mapping of one map version's units to the next, its loader,
its validator and a resolver. Pure: reads files, never a database."""
from cutover.orgchange.loader import ChangeSetError, load_changeset
from cutover.orgchange.resolve import Resolution, Resolver, UnknownCode
from cutover.orgchange.spec import ChangeSet, Fate, Problem, UnitFate, UnitKind
from cutover.orgchange.validate import summarise, validate

__all__ = ["ChangeSet", "ChangeSetError", "Fate", "Problem", "Resolution", "Resolver", "UnitFate", "UnitKind",
           "UnknownCode", "load_changeset", "summarise", "validate"]
