#!/usr/bin/env bash
# The soak over many seeds and boards (`make soak`, and the short soak of `make test`): boots
# the kernel with `job=soak seed=S rounds=N [BOOTARGS]` through the harness on each board,
# keeps each console in build/logs/<prefix>-<board>-<seed>.log, reads the kernel's `# soak ...`
# line and prints one row per run and a total.
#
#   soak.sh --harness H --kernel IMG --boards "virt-smmu raspi4b" --seeds "1 2" --rounds N
#           [--bootargs "fault=all"] [--expect-stale] [--timeout SECS] [--log-prefix soak]
#
# Exit status 0 when every run passed (exit 0, stale=0, every injected fault survived). With
# --expect-stale (for `smmu.skip_invalidate=1`), 0 only when every run FAILED and reported
# stale accesses: the soak must catch a missing IOTLB invalidation.
set -u
harness= kernel= boards= seeds= rounds= extra= expect_stale=0 timeout=600 prefix=soak
while [ $# -gt 0 ]; do
    case "$1" in
        --harness) harness=$2; shift 2 ;;
        --kernel) kernel=$2; shift 2 ;;
        --boards) boards=$2; shift 2 ;;
        --seeds) seeds=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --bootargs) extra=$2; shift 2 ;;
        --expect-stale) expect_stale=1; shift ;;
        --timeout) timeout=$2; shift 2 ;;
        --log-prefix) prefix=$2; shift 2 ;;
        *) echo "soak.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
extra=$(echo $extra) # trim
for v in harness kernel boards seeds rounds; do
    [ -n "${!v}" ] || { echo "soak.sh: --$v is required" >&2; exit 2; }
done
mkdir -p build/logs
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
printf '%-10s %6s %6s %9s %6s %13s %6s %17s %14s %9s %9s %8s %s\n' board seed rounds operations dmas faults stale \
    "notifier ins/rm" invalidations smmu_us unmap_us survived result
failed=0 runs=0 t_ops=0 t_dmas=0 t_stale=0 t_inj=0 t_surv=0 t_ins=0 t_inv=0 t_exp=0 t_seen=0 slowest=0 slowest_smmu=0
start=$SECONDS
for board in $boards; do
    for seed in $seeds; do
        log=build/logs/$prefix-$board-$seed.log
        timeout "$timeout" "$harness" run --board "$board" --kernel "$kernel" \
            --bootargs "job=soak seed=$seed rounds=$rounds $extra" >"$log" 2>&1 </dev/null
        status=$?
        line=$(grep -a '^# soak ' "$log" | tail -1 | tr -d '\r')
        runs=$((runs + 1))
        if [ -z "$line" ]; then
            printf '%-10s %6s %6s  no summary (exit %s): see %s\n' "$board" "$seed" "$rounds" "$status" "$log"
            failed=$((failed + 1))
            continue
        fi
        ops=$(field operations "$line") dmas=$(field dmas "$line") stale=$(field stale "$line")
        exp=$(field faults_expected "$line") seen=$(field faults_seen "$line")
        ins=$(field notifier_inserts "$line") rm=$(field notifier_removes "$line")
        inv=$(field notifier_invalidations "$line") us=$(field slowest_us "$line")
        smmu=$(field slowest_smmu_us "$line")
        inj=$(field injected "$line") surv=$(field survived "$line") result=$(field result "$line")
        printf '%-10s %6s %6s %9s %6s %13s %6s %17s %14s %9s %9s %8s %s\n' "$board" "$seed" "$rounds" \
            "$ops" "$dmas" "$seen/$exp" "$stale" "$ins/$rm" "$inv" "$smmu" "$us" "$surv/$inj" \
            "$result (exit $status)"
        t_ops=$((t_ops + ops)) t_dmas=$((t_dmas + dmas)) t_stale=$((t_stale + stale))
        t_inj=$((t_inj + inj)) t_surv=$((t_surv + surv)) t_ins=$((t_ins + ins)) t_inv=$((t_inv + inv))
        t_exp=$((t_exp + exp)) t_seen=$((t_seen + seen))
        [ "$us" -gt "$slowest" ] && slowest=$us
        [ "$smmu" -gt "$slowest_smmu" ] && slowest_smmu=$smmu
        if [ "$expect_stale" = 1 ]; then
            { [ "$status" -ne 0 ] && [ "$stale" -gt 0 ]; } || failed=$((failed + 1))
        else
            { [ "$status" -eq 0 ] && [ "$stale" -eq 0 ] && [ "$result" = PASS ]; } || failed=$((failed + 1))
        fi
    done
done
echo "soak: $runs runs on [$boards], seeds [$seeds], $rounds rounds per CPU${extra:+, $extra}, $((SECONDS - start)) s"
echo "soak: operations $t_ops, DMA transfers $t_dmas, faults seen/expected $t_seen/$t_exp, stale accesses $t_stale"
echo "soak: interval notifiers inserted $t_ins, invalidations seen $t_inv; injected faults $t_inj, survived $t_surv"
echo "soak: slowest SMMU invalidation ${slowest_smmu} us (driver: queue wait + TLBIs + CMD_SYNC), slowest munmap/mprotect ${slowest} us (wall clock, locks included)"
if [ "$expect_stale" = 1 ]; then
    if [ "$failed" -eq 0 ]; then
        echo "soak: every run caught the missing invalidation (stale accesses > 0, exit non-zero): OK"
    else
        echo "soak: $failed of $runs runs did NOT catch the missing invalidation"
        exit 1
    fi
elif [ "$failed" -ne 0 ]; then
    echo "soak: $failed of $runs runs FAILED (logs in build/logs/$prefix-*.log)"
    exit 1
else
    echo "soak: PASS"
fi
