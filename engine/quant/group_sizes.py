"""Which group sizes fit a model: a group must divide the input width of every linear a scheme quantizes.

A picker offers `CANDIDATE_GROUP_SIZES` (engine.quant.schemes) less those that leave a partial group in some
layer: SmolLM2-135M's linears read 576 values (q/k/v/o, gate, up) or 1536 (down), so 16, 32, 48, 64, 96 and
192 fit and 128 and 256 do not (576 = 4.5 x 128). `GroupSizeFit.note` says why the others are absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from engine.quant.linear import default_filter, linear_names
from engine.quant.shapes import CANDIDATE_GROUP_SIZES, group_sizes_dividing, or_list

MAX_NAMED = 6  # linears named in a note before "and N more"


@dataclass(frozen=True)
class GroupSizeFit:
    sizes: tuple[int, ...]  # to offer: the candidates dividing every width (else what does divide them)
    widths: dict[int, tuple[str, ...]] = field(default_factory=dict)  # input width -> linears reading it
    candidates: tuple[int, ...] = CANDIDATE_GROUP_SIZES

    @property
    def absent(self) -> dict[int, int]:
        """{candidate not offered: the smallest width it does not divide}."""
        return {
            size: min(width for width in self.widths if width % size)
            for size in self.candidates
            if size not in self.sizes and any(width % size for width in self.widths)
        }

    def note(self) -> str:
        """Why the absent candidates are absent, in words ("" when every candidate fits or nothing is known)."""
        if not self.widths:
            return ""
        widths = ", ".join(f"{width:,}" for width in sorted(self.widths))
        if not set(self.sizes) & set(self.candidates):
            return (
                f"None of the usual group sizes ({or_list(self.candidates)}) divides every layer width of "
                f"this model ({widths}); these sizes do."
            )
        by_width: dict[int, list[int]] = {}
        for size, width in self.absent.items():
            by_width.setdefault(width, []).append(size)
        reasons = []
        for width, sizes in sorted(by_width.items()):
            left_out = "is left out: it does" if len(sizes) == 1 else "are left out: they do"
            names = _named(self.widths[width])
            reasons.append(
                f"{_and_list(sizes)} {left_out} not divide {width:,}, the input width of this model's {names}"
            )
        return (
            "; ".join(reasons) + "."
            if reasons
            else f"Every usual size divides this model's widths ({widths})."
        )


def linear_widths(model: nn.Module, filter_fn=default_filter) -> dict[int, tuple[str, ...]]:
    """{input width: short names of the linears reading it, in model order} for the linears a scheme
    quantizes (every nn.Linear but the output head, as engine.quant.linear does)."""
    widths: dict[int, list[str]] = {}
    for name in linear_names(model, filter_fn):
        short = name.rsplit(".", 1)[-1]
        named = widths.setdefault(model.get_submodule(name).in_features, [])
        if short not in named:
            named.append(short)
    return {width: tuple(names) for width, names in widths.items()}


def group_size_fit(model: nn.Module, candidates: tuple[int, ...] = CANDIDATE_GROUP_SIZES) -> GroupSizeFit:
    """The group sizes to offer for `model`, with the widths that rule the others out. A model without
    linears (or a packed checkpoint whose linears are replaced) gets every candidate."""
    widths = linear_widths(model)
    return GroupSizeFit(tuple(group_sizes_dividing(widths, candidates)), widths, tuple(candidates))


def fitting_group_sizes(model: nn.Module, candidates: tuple[int, ...] = CANDIDATE_GROUP_SIZES) -> list[int]:
    """The candidates dividing the input width of every linear of `model` (SmolLM2-135M: 16, 32, 48, 64, 96,
    192); the divisors of the widths' greatest common divisor when none does; all candidates without linears."""
    return list(group_size_fit(model, candidates).sizes)


def _and_list(numbers) -> str:
    words = [f"{n}" for n in numbers]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _named(names: tuple[str, ...]) -> str:
    shown = list(names[:MAX_NAMED])
    if len(names) > MAX_NAMED:
        shown.append(f"{len(names) - MAX_NAMED} more")
    return f"{_and_list(shown)} layer{'s' if len(names) > 1 else ''}"
