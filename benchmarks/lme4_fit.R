# Fit one GLMM with lme4 and print the result as one line of JSON (called by glmm_vs_lme4.py).
#
#   Rscript benchmarks/lme4_fit.R DATA.csv "y ~ x0 + (1 | g0)" gaussian|binomial OUT.json
#
# gaussian: lmer(REML = FALSE), i.e. maximum likelihood; binomial: glmer(family = binomial),
# Laplace (nAGQ = 1), the only choice lme4 has with several random-effect terms.
# The time (wall and CPU) covers the lmer()/glmer() call only (model building included, reading the CSV not).
# Grouping columns are read as factors. VmHWM (the process's peak resident memory) is read
# from /proc/self/status at the end.

args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 4) stop("usage: lme4_fit.R DATA.csv FORMULA FAMILY OUT.json")
csv <- args[1]
formula <- as.formula(args[2])
family <- args[3]
out <- args[4]

suppressPackageStartupMessages(library(lme4))
data <- read.csv(csv, stringsAsFactors = TRUE)

num <- function(x) if (is.finite(x)) format(x, digits = 10) else "null"
named <- function(x) paste0("{", paste0('"', names(x), '": ', vapply(x, num, ""), collapse = ", "), "}")

start <- proc.time()
fit <- if (family == "gaussian") {
  lmer(formula, data = data, REML = FALSE)
} else {
  glmer(formula, data = data, family = binomial)
}
used <- proc.time() - start
seconds <- used[["elapsed"]]
cpu <- used[["user.self"]] + used[["sys.self"]]

vc <- as.data.frame(VarCorr(fit))
vc <- vc[is.na(vc$var2), ]
variances <- setNames(vc$vcov, ifelse(vc$grp == "Residual", "Residual", vc$grp))
messages <- fit@optinfo$conv$lme4$messages
hwm <- tryCatch({
  line <- grep("^VmHWM", readLines("/proc/self/status"), value = TRUE)
  as.numeric(gsub("[^0-9]", "", line)) / 1024
}, error = function(e) NA)
si <- sessionInfo()

cat(file = out, paste0(
  "{",
  '"seconds": ', num(seconds), ", ",
  '"cpu_seconds": ', num(cpu), ", ",
  '"variances": ', named(variances), ", ",
  '"fixef": ', named(fixef(fit)), ", ",
  '"peak_mb": ', num(hwm), ", ",
  '"warnings": "', gsub('"', "'", paste(messages, collapse = "; ")), '", ',
  '"blas": "', si$BLAS, '", ',
  '"version": "lme4 ', as.character(packageVersion("lme4")), ", ", R.version.string, '"',
  "}\n"
))
