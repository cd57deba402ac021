"""``summary()``: the tidy tables printed in lme4's order and layout.

Sections: method and family(link), formula, data; fit criteria (AIC, BIC,
logLik, deviance, df.resid, with the log-likelihood's estimator); scaled residuals; random
effects (Groups, Name, Variance, Std.Dev., Corr; one block per class for
categorical); number of obs and levels; fixed effects; the network; E-step
diagnostics; convergence. Text for the console, HTML for notebooks.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from gmenn_formula.errors import NoTrainingDataError
from gmenn_formula.results.state import FitState

SAMPLER_NAMES = {
    "exact": "exact block-Gibbs draws",
    "whitened": "NUTS on per-level whitened effects",
    "paper": "NUTS, identity mass (paper)",
}


def _fmt(value: float, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return f"{value:.{digits}g}"


def _numeric(values: list[str]) -> bool:
    """Whether a column holds numbers (R's NA counts as one)."""
    try:
        [float(v) for v in values if v.strip() and v != "NA"]
    except ValueError:
        return False
    return True


def _table(frame: pd.DataFrame, indent: str = " ") -> str:
    """Left-aligned text columns, right-aligned numbers, as R prints."""
    body = frame.astype(str).values.tolist()
    cells = [[str(c) for c in frame.columns]] + body
    widths = [max(len(row[i]) for row in cells) for i in range(len(frame.columns))]
    right = [_numeric([row[i] for row in body]) for i in range(len(frame.columns))]
    lines = []
    for row in cells:
        parts = []
        for i, value in enumerate(row):
            numeric = right[i]
            parts.append(str(value).rjust(widths[i]) if numeric else str(value).ljust(widths[i]))
        lines.append(indent + " ".join(parts).rstrip())
    return "\n".join(lines)


class Summary:
    """Printed summary of a :class:`~gmenn_formula.results.result.GmennResult`."""

    def __init__(self, result) -> None:
        self.result = result
        self.state: FitState = result.state
        self.sampler = result.state.config.estep.kind(result.family.has_dispersion)
        """The sampler the fit drew with ("exact", "whitened" or "paper")."""

    # -- sections as DataFrames -------------------------------------------------
    def random_effects(self) -> dict[str | None, pd.DataFrame]:
        """lme4's Random effects block per class (key None for one-output families)."""
        table = self.result.varcorr()
        blocks: dict[str | None, pd.DataFrame] = {}
        keys = [None] if "class" not in table else [c for c in table["class"].dropna().unique()]
        for key in keys:
            part = table if key is None else table[(table["class"] == key) | (table["group"] == "Residual")]
            rows = []
            last_group = None
            variances = part[part["term2"].isna()]
            for _, row in variances.iterrows():
                corr = part[(part["group"] == row["group"]) & (part["term2"] == row["term"])]
                rows.append(
                    {
                        "Groups": row["group"] if row["group"] != last_group else "",
                        "Name": row["term"],
                        "Variance": _fmt(row["variance"]),
                        "Std.Dev.": _fmt(row["std"]),
                        "Corr": " ".join(f"{c:.2f}" for c in corr["corr"]),
                    }
                )
                last_group = row["group"]
            block = pd.DataFrame(rows)
            blocks[key] = block if block["Corr"].str.len().any() else block.drop(columns="Corr")  # lme4 omits an empty Corr
        return blocks

    def fixed_effects(self) -> pd.DataFrame:
        """Estimates: one column per class for categorical."""
        table = self.result.fixef()
        if table.empty:
            return table
        if "class" in table:
            wide = table.pivot(index="term", columns="class", values="estimate")
            wide = wide.loc[list(dict.fromkeys(table["term"])), list(dict.fromkeys(table["class"]))]
            return wide.map(_fmt).reset_index().rename(columns={"term": ""})
        return pd.DataFrame({"": table["term"], "Estimate": table["estimate"].map(_fmt)})

    def loglik(self):
        """The fit's :class:`~gmenn_formula.results.likelihood.LogLik`, or None when it cannot be computed
        (a model loaded from a file written without it)."""
        try:
            return self.result.loglik()
        except NoTrainingDataError:
            return None

    def fit_criteria(self) -> pd.DataFrame | None:
        """lme4's AIC, BIC, logLik, deviance, df.resid row (rounded to 0.1 as lme4 prints)."""
        loglik = self.loglik()
        if loglik is None:
            return None
        values = [loglik.aic, loglik.bic, float(loglik), loglik.deviance]
        cells = [f"{v:.1f}" if loglik.reliable else "NA" for v in values]
        return pd.DataFrame(
            [cells + [str(loglik.nobs - loglik.df)]],
            columns=["AIC", "BIC", "logLik", "deviance", "df.resid"],
        )

    def criteria_lines(self) -> list[str]:
        criteria = self.fit_criteria()
        if criteria is None:
            return []
        first, *rest = self.loglik().describe()
        return [_table(criteria), f" logLik: {first}", *(f"  {line}" for line in rest)]

    def scaled_residuals(self) -> pd.DataFrame | None:
        return self.result.scaled_residuals()

    # -- text ---------------------------------------------------------------------
    def header(self) -> list[str]:
        state, result = self.state, self.result
        kind = "Generalized mixed effects neural network" if result.spec.networks else "Generalized linear mixed model"
        family = result.family
        method = "maximum likelihood (closed form)" if state.closed_form else f"Monte Carlo EM ({SAMPLER_NAMES[self.sampler]} E-step)"
        if state.closed_form and result.spec.networks:
            method = f"Monte Carlo EM ({SAMPLER_NAMES[self.sampler]} E-step), variances by maximum likelihood in closed form"
        return [
            f"{kind} fit by {method} ['gmenn']",
            f" Family: {family.name}  ( {family.link} )",
            f"Formula: {result.formula}",
            f"   Data: {result.nobs} rows" + (f" ({result.design.num_dropped} dropped for missing values)" if result.design.num_dropped else ""),
        ]

    def network_lines(self) -> list[str]:
        state = self.state
        nets = state.model.networks
        if not len(nets):
            return []
        lines = ["Network:"]
        for index, (spec, net) in enumerate(zip(self.result.spec.networks, nets), start=1):
            params = sum(p.numel() for p in net.parameters())
            arch = spec.term.net or "MLP " + "-".join(str(m.out_features) for m in net if hasattr(m, "out_features"))
            lines.append(f" nn #{index}: {arch}, {len(spec.block.names)} inputs, {params:,} parameters")
        lines.append(
            f" epochs: {state.epochs}, best epoch: {state.best_epoch}, best validation loss: {_fmt(state.best_validation_loss, 6)}"
        )
        return lines

    def estep_lines(self) -> list[str]:
        estep, history = self.state.config.estep, self.state.history
        acceptance = np.mean([h.acceptance for h in history])
        steps = np.mean([h.leapfrog_steps for h in history])
        divergences = int(np.sum([h.divergences for h in history]))
        sampler = sum(h.estep_seconds for h in history)
        waited = sum(h.seconds - h.mstep_seconds for h in history)
        parts = [(sum(h.setup_seconds for h in history), "tracing and compiling"), (sampler - waited, "beside the M-step")]
        shown = [f"{seconds:.1f} s{' of it' if not i else ''} {what}" for i, (seconds, what) in enumerate(p for p in parts if p[0] >= 0.05)]
        of_it = f" ({', '.join(shown)})" if shown else ""
        training = any(h.phase == "train" for h in history)
        draws = f"K = {estep.training_draws} draws/epoch while training, then {estep.draws}" if training else f"K = {estep.draws} draws/epoch"
        diagnostics = "" if self.sampler == "exact" else (
            f"; mean acceptance {acceptance:.2f}, mean leapfrog steps {steps:.1f}, divergences {divergences}"
        )
        return [
            f"E-step: {self.sampler} sampler, {draws}, R = {estep.burn_in} burn-in{diagnostics}",
            f" time: {self.state.seconds:.1f} s in all, E-step {sampler:.1f} s{of_it}",
        ]

    def convergence_lines(self) -> list[str]:
        status = [f"Status: {self.result.status}"]
        if self.state.messages:
            return status + ["Convergence warnings:", *(" " + m for m in self.state.messages)]
        return status

    def __str__(self) -> str:
        result = self.result
        lines = self.header() + [""]
        criteria = self.criteria_lines()
        if criteria:
            lines += criteria + [""]
        residuals = self.scaled_residuals()
        if residuals is not None:
            lines += ["Scaled residuals:", _table(residuals), ""]
        lines.append("Random effects:")
        for key, block in self.random_effects().items():
            if key is not None:
                lines.append(f" class {key}:")
            lines.append(_table(block))
        groups = "; ".join(f"{name}, {count}" for name, count in result.ngrps().items())
        lines += [f"Number of obs: {result.nobs}, groups:  {groups}", ""]
        fixed = self.fixed_effects()
        if not fixed.empty:
            lines += ["Fixed effects:", _table(fixed, indent=""), ""]
        network = self.network_lines()
        if network:
            lines += network + [""]
        lines += self.estep_lines() + self.convergence_lines()
        return "\n".join(lines)

    def __repr__(self) -> str:  # consoles and notebooks' text fallback print the summary itself
        return str(self)

    def _repr_html_(self) -> str:
        parts = [f"<pre>{html.escape(chr(10).join(self.header()))}</pre>"]
        criteria = self.fit_criteria()
        if criteria is not None:
            parts += [criteria.to_html(index=False), f"<pre>{html.escape(chr(10).join(self.criteria_lines()[1:]))}</pre>"]
        parts.append("<b>Random effects</b>")
        for key, block in self.random_effects().items():
            if key is not None:
                parts.append(f"<i>class {html.escape(str(key))}</i>")
            parts.append(block.to_html(index=False))
        fixed = self.fixed_effects()
        if not fixed.empty:
            parts += ["<b>Fixed effects</b>", fixed.to_html(index=False)]
        parts.append(f"<pre>{html.escape(chr(10).join(self.network_lines() + self.estep_lines() + self.convergence_lines()))}</pre>")
        return "\n".join(parts)
