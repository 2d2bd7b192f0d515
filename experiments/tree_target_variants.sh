# The training targets from the searched tree that issue 32's tables compare
# (sourced by experiments/{countdown,game24}/tree_targets.sh): `off` turns
# every policy target of a config off, `variant[name]` turns one back on.
#   visits    the search's visit weights (search.policy_weight=1)
#   sft       SFT on solved answers, the best path (search.sft_weight=1)
#   step_dpo  step-DPO on sibling steps ranked by Q (step_dpo_weight=1)
#   pav       process advantages A = Q - V from the tree: dense step-value
#             targets and the policy gradient -A log pi (pav_*_weight=1)
#   none      no policy target: the control, what the terms every variant
#             shares (value, anchor, ...) do alone
# shellcheck disable=SC2034
off=(--config.search.policy_weight=0 --config.search.sft_weight=0
     --config.experimental.value_policy_weight=0)
declare -A variant=(
  [none]=""
  [visits]="--config.search.policy_weight=1"
  [sft]="--config.search.sft_weight=1"
  [step_dpo]="--config.experimental.step_dpo_weight=1"
  [pav]="--config.experimental.pav_value_weight=1 --config.experimental.pav_policy_weight=1"
)
