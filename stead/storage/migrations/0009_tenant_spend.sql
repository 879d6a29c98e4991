-- Tenant spending windows (issue #18): what each tenant's model calls cost per UTC day and per
-- UTC month, shared by every worker, and the reservations that hold a call's estimate against
-- them while the model is called (stead/storage/ledger/_spend.py).
--
-- A window's spent dollars are kept in its row; its reserved dollars are the sum of the live
-- reservations counted against it (state 'reserved', not expired), so an abandoned reservation
-- (its worker died mid-call) stops counting the moment it expires, with no sweep to run.
--
-- Concurrency: stead_reserve_spend and stead_settle_spend take a transaction-scoped advisory
-- lock per tenant, so the reservations of one tenant are decided one at a time; each
-- statement inside a (volatile) function reads a fresh snapshot, so a reserver that waited for
-- the lock sees what the one before it committed. Two workers racing therefore never both pass
-- a cap: spent + live reservations stays within the cap, and only a call that costs more than
-- its estimate (settled after the model answered) can take a window past it.

create table stead_tenant_spend (
    tenant          text not null,
    kind            text not null check (kind in ('day', 'month')),
    window_start    timestamptz not null,        -- UTC midnight of the day / the month's 1st
    spent_usd       numeric not null default 0,  -- settled cost of calls reserved in it
    updated_at      timestamptz not null default now(),
    primary key (tenant, kind, window_start)
);

-- One row per model call, keyed like the model call itself (workflow, run, step, the chain's
-- place) and not by attempt: a retried activity finds its reservation instead of adding one.
create table stead_spend_reservations (
    workflow_id     text not null,
    run_id          text not null,
    step            integer not null,
    fallback        integer not null default 0,
    tenant          text not null,
    usd             numeric not null,            -- the estimate reserved
    day_start       timestamptz not null,        -- the windows it counts (and settles) in
    month_start     timestamptz not null,
    state           text not null check (state in ('reserved', 'settled', 'released')),
    attempt         integer not null,            -- the activity attempt that last reserved it
    expires_at      timestamptz not null,        -- a live reservation stops counting after
    settled_usd     numeric not null default 0,  -- what its calls cost, summed
    settled_attempts integer[] not null default '{}',  -- attempts already settled (once each)
    reserved_at     timestamptz not null default now(),
    settled_at      timestamptz,
    primary key (workflow_id, run_id, step, fallback)
);
create index stead_spend_reservations_live on stead_spend_reservations (tenant, expires_at)
    where state = 'reserved';

-- Reserve p_usd for one model call against the tenant's windows of now, checking the caps
-- given (null: no cap for that window). Answers one row: 'reserved' (new, or again after a
-- release/settle), 'held' (this call's reservation is live already: a retried attempt) or
-- 'refused' with the first window whose cap it would pass, its spent, reserved and cap.
create function stead_reserve_spend(
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
    select * into cur from stead_spend_reservations r
        where r.workflow_id = p_workflow_id and r.run_id = p_run_id and r.step = p_step
          and r.fallback = p_fallback;
    if found and cur.state = 'reserved' and cur.expires_at > t then
        update stead_spend_reservations r
            set expires_at = t + make_interval(secs => p_ttl_seconds), attempt = p_attempt
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
              and (case w_kind when 'day' then r.day_start else r.month_start end) = w_start
              and not (r.workflow_id = p_workflow_id and r.run_id = p_run_id
                       and r.step = p_step and r.fallback = p_fallback);
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

-- Settle one model call: its attempt p_attempt cost p_usd. The reservation ends (it counts no
-- more) and the cost goes to the windows it was reserved in. Each attempt is added once, so a
-- settle re-sent after a lost acknowledgement adds nothing, while a late attempt that also
-- answered (and was billed) is added beside the one that settled first. Answers whether it
-- added the cost.
create function stead_settle_spend(
    p_workflow_id text, p_run_id text, p_step integer, p_fallback integer, p_attempt integer,
    p_usd double precision)
returns boolean
language plpgsql volatile as $$
declare
    who text;
    cur stead_spend_reservations%rowtype;
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
    update stead_spend_reservations r
        set state = 'settled', settled_usd = r.settled_usd + p_usd::numeric,
            settled_attempts = r.settled_attempts || p_attempt, settled_at = clock_timestamp()
        where r.workflow_id = p_workflow_id and r.run_id = p_run_id and r.step = p_step
          and r.fallback = p_fallback;
    insert into stead_tenant_spend as s (tenant, kind, window_start, spent_usd)
        values (who, 'day', cur.day_start, p_usd::numeric),
               (who, 'month', cur.month_start, p_usd::numeric)
        on conflict (tenant, kind, window_start) do update
            set spent_usd = s.spent_usd + excluded.spent_usd, updated_at = clock_timestamp();
    return true;
end
$$;

grant select, insert, update on stead_tenant_spend, stead_spend_reservations to stead_worker;
