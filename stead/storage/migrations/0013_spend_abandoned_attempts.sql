-- Tenant spending windows: an attempt that reserved and was never settled nor released is
-- charged at its estimate (issue #18; see stead/storage/ledger/_spend.py).
--
-- Such an attempt's worker died mid-call (or hung past its reservation's TTL): the provider may
-- have answered and billed it, and nobody will ever say what it cost. Before this migration a
-- retry on another worker went on with the live reservation and settled only its own answer,
-- so the window undercounted by one call per kill; a reservation left to expire counted for
-- nothing. A money cap errs on the side of counting, so now:
--
-- * when a later attempt of the same call reserves while an earlier one still holds the
--   reservation (state 'reserved', live or expired), the earlier attempt is charged at its
--   estimate ('abandoned'), and the new attempt reserves its own estimate, refused like any
--   call if that would pass a cap;
-- * a reservation that expired with no later attempt (the run was terminated) is charged at
--   its estimate the next time its tenant reserves (under the tenant's lock, the same lock
--   every reserve and settle takes: lazily, no sweep), and read as spent by spend_usage
--   until then;
-- * an abandoned attempt that settles after all (a slow worker, not a dead one) has its
--   estimate replaced by what it really cost: counted once, never twice;
-- * a released attempt (the call failed cleanly) is charged nothing, as before.

alter table stead_spend_reservations
    drop constraint stead_spend_reservations_state_check,
    add constraint stead_spend_reservations_state_check
        check (state in ('reserved', 'settled', 'released', 'abandoned')),
    add column charged_usd numeric not null default 0,           -- estimates charged, summed
    add column abandoned_attempts integer[] not null default '{}',  -- attempts charged so
    add column abandoned_usd numeric[] not null default '{}';       -- ... at these estimates

-- As in 0009, with the abandoned attempts charged first: 'held' only for the attempt that
-- holds the live reservation (a reserve re-sent after a dropped connection).
create or replace function stead_reserve_spend(
    p_workflow_id text, p_run_id text, p_step integer, p_fallback integer, p_attempt integer,
    p_tenant text, p_usd double precision, p_day_cap double precision,
    p_month_cap double precision, p_ttl_seconds double precision)
returns table (outcome text, kind text, window_start timestamptz, spent double precision,
               reserved double precision, cap double precision)
language plpgsql volatile as $$
declare
    t       timestamptz;
    d       timestamptz;
    m       timestamptz;
    cur     stead_spend_reservations%rowtype;
    w_kind  text;
    w_start timestamptz;
    w_cap   double precision;
    w_spent numeric;
    w_res   numeric;
begin
    -- Lock class 726561 ('stead' spend) in the two-key space, apart from one-key locks.
    perform pg_advisory_xact_lock(726561, hashtext(p_tenant));
    t := clock_timestamp();  -- after the wait for the lock
    d := date_trunc('day', t at time zone 'UTC') at time zone 'UTC';
    m := date_trunc('month', t at time zone 'UTC') at time zone 'UTC';
    -- Charge at their estimates the reservations of this tenant abandoned by now: the expired
    -- ones, and this call's if another (earlier) attempt holds it.
    with gone as (
        update stead_spend_reservations r
            set state = 'abandoned', charged_usd = r.charged_usd + r.usd,
                abandoned_attempts = r.abandoned_attempts || r.attempt,
                abandoned_usd = r.abandoned_usd || r.usd
            where r.tenant = p_tenant and r.state = 'reserved'
              and (r.expires_at <= t
                   or (r.workflow_id = p_workflow_id and r.run_id = p_run_id
                       and r.step = p_step and r.fallback = p_fallback
                       and r.attempt <> p_attempt))
            returning r.day_start, r.month_start, r.usd),
    charge as (
        select 'day'::text as kind, g.day_start as start, sum(g.usd) as usd from gone g
            group by g.day_start
        union all
        select 'month', g.month_start, sum(g.usd) from gone g group by g.month_start)
    insert into stead_tenant_spend as s (tenant, kind, window_start, spent_usd)
        select p_tenant, c.kind, c.start, c.usd from charge c
        on conflict on constraint stead_tenant_spend_pkey do update
            set spent_usd = s.spent_usd + excluded.spent_usd, updated_at = clock_timestamp();
    select * into cur from stead_spend_reservations r
        where r.workflow_id = p_workflow_id and r.run_id = p_run_id and r.step = p_step
          and r.fallback = p_fallback;
    if found and cur.state = 'reserved' then  -- live, and this attempt's (else charged above)
        update stead_spend_reservations r
            set expires_at = t + make_interval(secs => p_ttl_seconds)
            where r.workflow_id = p_workflow_id and r.run_id = p_run_id and r.step = p_step
              and r.fallback = p_fallback;
        return query select 'held'::text, null::text, null::timestamptz,
            null::double precision, null::double precision, null::double precision;
        return;
    end if;
    foreach w_kind in array array['day', 'month'] loop
        w_cap := case w_kind when 'day' then p_day_cap else p_month_cap end;
        continue when w_cap is null;
        w_start := case w_kind when 'day' then d else m end;
        select coalesce((select s.spent_usd from stead_tenant_spend s
                         where s.tenant = p_tenant and s.kind = w_kind
                           and s.window_start = w_start), 0) into w_spent;
        select coalesce(sum(r.usd), 0) into w_res from stead_spend_reservations r
            where r.tenant = p_tenant and r.state = 'reserved' and r.expires_at > t
              and (case w_kind when 'day' then r.day_start else r.month_start end) = w_start;
        if w_spent + w_res + p_usd::numeric > w_cap::numeric then
            return query select 'refused'::text, w_kind, w_start, w_spent::double precision,
                w_res::double precision, w_cap;
            return;
        end if;
    end loop;
    insert into stead_tenant_spend as s (tenant, kind, window_start)
        values (p_tenant, 'day', d), (p_tenant, 'month', m)
        on conflict do nothing;
    insert into stead_spend_reservations as r (workflow_id, run_id, step, fallback, tenant, usd,
        day_start, month_start, state, attempt, expires_at)
        values (p_workflow_id, p_run_id, p_step, p_fallback, p_tenant, p_usd::numeric, d, m,
                'reserved', p_attempt, t + make_interval(secs => p_ttl_seconds))
        on conflict (workflow_id, run_id, step, fallback) do update
            set usd = excluded.usd, day_start = excluded.day_start,
                month_start = excluded.month_start, state = 'reserved',
                attempt = excluded.attempt, expires_at = excluded.expires_at,
                reserved_at = t;
    return query select 'reserved'::text, null::text, null::timestamptz,
        null::double precision, null::double precision, null::double precision;
end
$$;

-- As in 0009 (each attempt added once), and: an attempt charged at its estimate when it was
-- abandoned has the estimate replaced by its cost; a late attempt's settle does not end the
-- reservation a newer attempt holds.
create or replace function stead_settle_spend(
    p_workflow_id text, p_run_id text, p_step integer, p_fallback integer, p_attempt integer,
    p_usd double precision)
returns boolean
language plpgsql volatile as $$
declare
    who text;
    cur stead_spend_reservations%rowtype;
    i   integer;
    was numeric := 0;  -- the estimate this attempt was charged at, to take back
begin
    select r.tenant into who from stead_spend_reservations r
        where r.workflow_id = p_workflow_id and r.run_id = p_run_id and r.step = p_step
          and r.fallback = p_fallback;
    if not found then
        return false;
    end if;
    -- The reserver's lock first, then rows: the order stead_reserve_spend takes them in.
    perform pg_advisory_xact_lock(726561, hashtext(who));
    select * into cur from stead_spend_reservations r
        where r.workflow_id = p_workflow_id and r.run_id = p_run_id and r.step = p_step
          and r.fallback = p_fallback;
    if p_attempt = any(cur.settled_attempts) then
        return false;
    end if;
    i := array_position(cur.abandoned_attempts, p_attempt);
    if i is not null then
        was := cur.abandoned_usd[i];
    end if;
    update stead_spend_reservations r
        set state = case when r.state = 'reserved' and r.attempt <> p_attempt then r.state
                         else 'settled' end,
            settled_usd = r.settled_usd + p_usd::numeric, charged_usd = r.charged_usd - was,
            settled_attempts = r.settled_attempts || p_attempt, settled_at = clock_timestamp()
        where r.workflow_id = p_workflow_id and r.run_id = p_run_id and r.step = p_step
          and r.fallback = p_fallback;
    insert into stead_tenant_spend as s (tenant, kind, window_start, spent_usd)
        values (who, 'day', cur.day_start, p_usd::numeric - was),
               (who, 'month', cur.month_start, p_usd::numeric - was)
        on conflict (tenant, kind, window_start) do update
            set spent_usd = s.spent_usd + excluded.spent_usd, updated_at = clock_timestamp();
    return true;
end
$$;
