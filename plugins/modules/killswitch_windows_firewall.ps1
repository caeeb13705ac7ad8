#!powershell

# Copyright: netlock.killswitch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

#AnsibleRequires -CSharpUtil Ansible.Basic

# Thin on purpose: the rules come rendered from the controller (render_windows.py), the third-party analysis and the
# diff text are made there too (windows_plan.py). This file only reconciles the group (a rule is in sync when its
# filters, Description, state, action and direction are the desired ones), records what it changes, installs the
# guard and lists what is live.

$spec = @{
    options = @{
        state = @{ type = 'str'; choices = @('query', 'present', 'absent', 'confirm'); default = 'present' }
        document = @{ type = 'dict' }
        disable_rules = @{ type = 'list'; elements = 'str'; default = @() }
        # The action plugin turns it into disable_rules; the module only accepts it.
        exclusive = @{ type = 'bool'; default = $false }
        state_dir = @{ type = 'path'; default = 'C:\ProgramData\netlock-killswitch' }
        guard_enabled = @{ type = 'bool'; default = $true }
        guard_interval = @{ type = 'int'; default = 30 }
        rollback_timeout = @{ type = 'int'; default = 0 }
    }
    required_if = @(
        , @('state', 'present', @('document'))
    )
    supports_check_mode = $true
}

$module = [Ansible.Basic.AnsibleModule]::Create($args, $spec)

# Everything the guard needs is in this block: the module dot-sources it and writes its text into guard.ps1, so the
# guard reconciles exactly as the module does.
$killswitchFunctions = {
    $KillswitchProfileNames = @('Domain', 'Private', 'Public')
    $KillswitchTaskName = 'netlock-killswitch-guard'
    $KillswitchEventSource = 'netlock-killswitch'
    # One lock for the module and the guard: a guard pass never re-applies policy.json while the module changes the
    # host. The guard waits briefly and skips its pass (the next trigger checks again); the module waits for a pass.
    $KillswitchMutexName = 'Global\netlock-killswitch'
    $KillswitchGuardLockSeconds = 5
    $KillswitchModuleLockSeconds = 120

    function Enter-KillswitchLock {
        # The held mutex, or $null when it was not free in time. Its DACL lets SYSTEM (the guard) and Administrators
        # (the module) both open it: the default one of a SYSTEM process would refuse an administrator.
        # Mutex(bool, string, out bool, MutexSecurity) is .NET Framework's: Windows PowerShell 5.1 runs both.
        param([int]$TimeoutSeconds)
        $security = New-Object -TypeName System.Security.AccessControl.MutexSecurity
        foreach ($sid in @('S-1-5-18', 'S-1-5-32-544')) {
            $identity = New-Object -TypeName System.Security.Principal.SecurityIdentifier -ArgumentList $sid
            $security.AddAccessRule((New-Object -TypeName System.Security.AccessControl.MutexAccessRule -ArgumentList $identity, 'FullControl', 'Allow'))
        }
        $created = $false
        $mutex = [System.Threading.Mutex]::new($false, $KillswitchMutexName, [ref]$created, $security)
        try {
            $owned = $mutex.WaitOne([TimeSpan]::FromSeconds($TimeoutSeconds))
        }
        catch [System.Threading.AbandonedMutexException] {
            # Its holder ended without releasing it: the mutex is ours, and a reconcile repairs what it left.
            $owned = $true
        }
        if (-not $owned) {
            $mutex.Dispose()
            return $null
        }
        $mutex
    }

    function Exit-KillswitchLock {
        param($Mutex)
        if ($null -ne $Mutex) {
            $Mutex.ReleaseMutex()
            $Mutex.Dispose()
        }
    }

    function ConvertTo-KillswitchList {
        param($Value)
        # Windows Firewall says 'Any' for "no restriction"; the document says [] for the same. Callers wrap the call in
        # @() to get an array of zero, one or more strings.
        $Value | Where-Object { $null -ne $_ -and [string]$_ -ne '' -and [string]$_ -ne 'Any' } | ForEach-Object { [string]$_ }
    }

    function Get-KillswitchProfileState {
        $states = [ordered]@{}
        foreach ($fwProfile in (Get-NetFirewallProfile -Name $KillswitchProfileNames)) {
            $states[[string]$fwProfile.Name] = [ordered]@{
                enabled = ([string]$fwProfile.Enabled -eq 'True')
                default_inbound = [string]$fwProfile.DefaultInboundAction
                default_outbound = [string]$fwProfile.DefaultOutboundAction
            }
        }
        $states
    }

    function Get-KillswitchGroupRule {
        param([string]$Group)
        @(Get-NetFirewallRule -Group $Group -ErrorAction SilentlyContinue)
    }

    function Resolve-KillswitchInterface {
        param($Pattern)
        # New-NetFirewallRule resolves aliases once, when the rule is made: a pattern is resolved here, and again by
        # the guard, so an adapter that appears later is picked up on the next pass.
        $names = foreach ($one in @(ConvertTo-KillswitchList -Value $Pattern)) {
            Get-NetAdapter -Name $one -IncludeHidden -ErrorAction SilentlyContinue | ForEach-Object { [string]$_.Name }
        }
        $names | Where-Object { $null -ne $_ } | Sort-Object -Unique
    }

    function Get-KillswitchDescription {
        param($Rule, [string[]]$Alias)
        'netlock.killswitch digest={0} interfaces={1}' -f $Rule.digest, ($Alias -join '|')
    }

    function Get-KillswitchDesiredRule {
        param($Document)
        $desired = [System.Collections.Generic.List[object]]@()
        $unresolved = [System.Collections.Generic.List[string]]@()
        foreach ($rule in @($Document.rules)) {
            $patterns = @(ConvertTo-KillswitchList -Value $rule.interface_aliases)
            $aliases = @(Resolve-KillswitchInterface -Pattern $patterns)
            foreach ($pattern in $patterns) {
                if (-not (@(Resolve-KillswitchInterface -Pattern $pattern).Count) -and -not $unresolved.Contains($pattern)) {
                    $unresolved.Add($pattern)
                }
            }
            # A rule limited to interfaces of which none exists stays disabled: enabled without an interface it would
            # allow every interface.
            $enabled = ($patterns.Count -eq 0) -or ($aliases.Count -gt 0)
            $desired.Add([ordered]@{
                    rule = $rule
                    aliases = $aliases
                    enabled = $enabled
                    description = Get-KillswitchDescription -Rule $rule -Alias $aliases
                })
        }
        @{ rules = $desired; unresolved = @($unresolved | Sort-Object) }
    }

    function New-KillswitchRule {
        param($Document, $Want)
        $rule = $Want.rule
        $params = @{
            Name = [string]$rule.name
            DisplayName = [string]$rule.display_name
            Description = $Want.description
            Group = [string]$Document.group
            Direction = [string]$rule.direction
            Action = 'Allow'
            Protocol = [string]$rule.protocol
            Enabled = $(if ($Want.enabled) { 'True' } else { 'False' })
            ErrorAction = 'Stop'
        }
        $lists = @{
            LocalPort = 'local_ports'
            RemotePort = 'remote_ports'
            RemoteAddress = 'remote_addresses'
            IcmpType = 'icmp_types'
        }
        foreach ($param in $lists.Keys) {
            $values = @(ConvertTo-KillswitchList -Value $rule.($lists[$param]))
            if ($values.Count -gt 0) {
                $params[$param] = $values
            }
        }
        if ($Want.aliases.Count -gt 0) {
            $params.InterfaceAlias = $Want.aliases
        }
        if ($rule.program) {
            $params.Program = [string]$rule.program
        }
        New-NetFirewallRule @params | Out-Null
    }

    function ConvertTo-KillswitchFilterSet {
        param($Value, [string]$Kind)
        # A filter's values as one sorted, lower-case text, built the same way for the live rule and the desired one.
        # Windows reports 'Any' for no restriction (the document says []), may write an IPv4 subnet with its mask
        # (10.0.0.0/255.0.0.0), an ICMP type with its code (135:*), a protocol by its number, and keeps the case of
        # paths and aliases as typed.
        $protocols = @{ '1' = 'icmpv4'; '6' = 'tcp'; '17' = 'udp'; '58' = 'icmpv6' }
        $items = foreach ($item in @(ConvertTo-KillswitchList -Value $Value)) {
            $item = $item.Trim().ToLowerInvariant()
            if ($Kind -eq 'icmp') {
                $item = $item -replace ':\*$', ''
            }
            elseif ($Kind -eq 'protocol' -and $protocols.ContainsKey($item)) {
                $item = $protocols[$item]
            }
            elseif ($Kind -eq 'address') {
                $network, $prefix = $item -split '/', 2
                $ends = foreach ($end in ($network -split '-')) {
                    $parsed = $null
                    if ([System.Net.IPAddress]::TryParse($end, [ref]$parsed)) { $parsed.ToString() } else { $end }
                }
                $item = $ends -join '-'
                if ($prefix -match '\.') {
                    $bits = (([System.Net.IPAddress]::Parse($prefix).GetAddressBytes() | ForEach-Object { [Convert]::ToString($_, 2) }) -join '')
                    $prefix = [string]($bits -replace '0', '').Length
                }
                $full = $(if ($item -match ':') { '128' } else { '32' })
                if ($prefix -and $prefix -ne $full) {
                    $item = '{0}/{1}' -f $item, $prefix
                }
            }
            $item
        }
        (@($items) | Sort-Object -Unique) -join '|'
    }

    function Test-KillswitchRuleInSync {
        # A group rule is in sync when what Windows enforces equals the desired rule: its filters (addresses, ports,
        # protocol, ICMP types, program, interfaces), not only its Description, which an in-place edit keeps.
        param($Have, $Want)
        $rule = $Want.rule
        $address = $Have | Get-NetFirewallAddressFilter
        $port = $Have | Get-NetFirewallPortFilter
        $application = $Have | Get-NetFirewallApplicationFilter
        $interface = $Have | Get-NetFirewallInterfaceFilter
        $pairs = [ordered]@{
            RemoteAddress = @('address', $address.RemoteAddress, $rule.remote_addresses)
            LocalAddress = @('address', $address.LocalAddress, $null)
            LocalPort = @('port', $port.LocalPort, $rule.local_ports)
            RemotePort = @('port', $port.RemotePort, $rule.remote_ports)
            Protocol = @('protocol', $port.Protocol, $rule.protocol)
            IcmpType = @('icmp', $port.IcmpType, $rule.icmp_types)
            Program = @('program', $application.Program, $rule.program)
            InterfaceAlias = @('alias', $interface.InterfaceAlias, $Want.aliases)
        }
        foreach ($filter in $pairs.Keys) {
            $kind, $liveValue, $wantedValue = $pairs[$filter]
            if ((ConvertTo-KillswitchFilterSet -Value $liveValue -Kind $kind) -cne (ConvertTo-KillswitchFilterSet -Value $wantedValue -Kind $kind)) {
                return $false
            }
        }
        $Have.Description -ceq $Want.description -and ([string]$Have.Enabled -eq 'True') -eq $Want.enabled -and
        [string]$Have.Action -eq 'Allow' -and [string]$Have.Direction -eq [string]$rule.direction
    }

    function Invoke-KillswitchReconcile {
        # Fail-closed order (no atomic load exists): profiles to Block first, then add or replace the group's rules,
        # then remove the group's rules that are no longer wanted, then disable the third-party rules asked for.
        param($Document, [string[]]$DisableRules = @(), [bool]$CheckMode = $false)
        $actions = [System.Collections.Generic.List[string]]@()
        $group = [string]$Document.group
        $names = @(ConvertTo-KillswitchList -Value $Document.profiles.names)
        $current = Get-KillswitchProfileState
        $wanted = [ordered]@{
            enabled = [bool]$Document.profiles.enabled
            default_inbound = [string]$Document.profiles.default_inbound
            default_outbound = [string]$Document.profiles.default_outbound
        }
        $profileChanged = $false
        foreach ($key in $wanted.Keys) {
            $old = [ordered]@{}
            foreach ($name in $names) {
                $value = $current[$name][$key]
                if ([string]$value -ne [string]$wanted[$key]) {
                    $old[$name] = $value
                }
            }
            $byValue = $old.Keys | Group-Object -Property { [string]$old[$_] }
            foreach ($bunch in $byValue) {
                $actions.Add(('profiles {0}: {1} {2} -> {3}' -f ($bunch.Group -join ','), ($key -replace '_', ' '), $bunch.Name,
                        $wanted[$key]))
                $profileChanged = $true
            }
        }
        if ($profileChanged -and -not $CheckMode) {
            $enabledText = $(if ($wanted.enabled) { 'True' } else { 'False' })
            Set-NetFirewallProfile -Name $names -Enabled $enabledText -DefaultInboundAction $wanted.default_inbound `
                -DefaultOutboundAction $wanted.default_outbound -ErrorAction Stop
        }

        $live = @{}
        foreach ($rule in (Get-KillswitchGroupRule -Group $group)) {
            $live[[string]$rule.Name] = $rule
        }
        $desired = Get-KillswitchDesiredRule -Document $Document
        $wantedNames = @{}
        foreach ($want in $desired.rules) {
            $name = [string]$want.rule.name
            $wantedNames[$name] = $true
            $have = $live[$name]
            if ($null -eq $have) {
                $actions.Add("add $name")
            }
            elseif (Test-KillswitchRuleInSync -Have $have -Want $want) {
                continue
            }
            else {
                $actions.Add("replace $name")
                if (-not $CheckMode) {
                    Remove-NetFirewallRule -Name $name -ErrorAction Stop
                }
            }
            if (-not $CheckMode) {
                New-KillswitchRule -Document $Document -Want $want
            }
        }
        foreach ($name in ($live.Keys | Sort-Object)) {
            if (-not $wantedNames.ContainsKey($name)) {
                $actions.Add("remove $name")
                if (-not $CheckMode) {
                    Remove-NetFirewallRule -Name $name -ErrorAction Stop
                }
            }
        }
        foreach ($name in @(ConvertTo-KillswitchList -Value $DisableRules)) {
            $other = Get-NetFirewallRule -Name $name -ErrorAction SilentlyContinue
            if ($null -ne $other -and [string]$other.Enabled -eq 'True' -and [string]$other.Group -ne $group) {
                $actions.Add("disable $name")
                if (-not $CheckMode) {
                    Disable-NetFirewallRule -Name $name -ErrorAction Stop
                }
            }
        }
        @{ actions = @($actions); unresolved = $desired.unresolved; desired = $desired.rules }
    }

    function Write-KillswitchFile {
        param([string]$Path, [string]$Text)
        # UTF-8 without a byte order mark, the same bytes on every run.
        [System.IO.File]::WriteAllText($Path, $Text, (New-Object -TypeName System.Text.UTF8Encoding -ArgumentList $false))
    }

    function Invoke-KillswitchGuardPass {
        param([string]$StateDir)
        $lock = Enter-KillswitchLock -TimeoutSeconds $KillswitchGuardLockSeconds
        if ($null -eq $lock) {
            return
        }
        try {
            $policyPath = Join-Path -Path $StateDir -ChildPath 'policy.json'
            if (-not (Test-Path -LiteralPath $policyPath -PathType Leaf)) {
                return  # state=absent removed it: nothing to re-assert
            }
            $policy = Get-Content -LiteralPath $policyPath -Raw | ConvertFrom-Json
            $result = Invoke-KillswitchReconcile -Document $policy.document -DisableRules @($policy.disable_rules)
            $status = [ordered]@{
                time = (Get-Date).ToUniversalTime().ToString('o')
                digest = [string]$policy.document.digest
                in_sync = ($result.actions.Count -eq 0)
                actions = @($result.actions)
                unresolved = @($result.unresolved)
            }
            Write-KillswitchFile -Path (Join-Path -Path $StateDir -ChildPath 'status.json') -Text ($status | ConvertTo-Json -Depth 5)
            if ($result.actions.Count -gt 0) {
                $message = "netlock.killswitch guard: drift repaired: " + ($result.actions -join '; ')
                [System.Diagnostics.EventLog]::WriteEntry($KillswitchEventSource, $message, [System.Diagnostics.EventLogEntryType]::Warning, 1001)
            }
            $result
        }
        finally {
            Exit-KillswitchLock -Mutex $lock
        }
    }

    # Safe apply (docs/windows.md): before an apply changes anything, the module writes a snapshot of what the apply
    # may change to rollback.json and registers the one-shot task below, which restores it at now+timeout unless the
    # controller confirms over a new connection (state=confirm removes the task and the snapshot).
    $KillswitchRollbackTaskName = 'netlock-killswitch-rollback'
    # The state files the guard and absent read: the rollback puts them back as they were, or removes them.
    $KillswitchRollbackFiles = @('policy.json', 'recorded.json')

    function Get-KillswitchRuleRecord {
        # A rule with its filters, in the form New-NetFirewallRule takes back: what a snapshot restores, and what the
        # module returns in live.rules for the controller to compare (windows_plan.status).
        param($Rule)
        $address = $Rule | Get-NetFirewallAddressFilter
        $port = $Rule | Get-NetFirewallPortFilter
        $application = $Rule | Get-NetFirewallApplicationFilter
        $interface = $Rule | Get-NetFirewallInterfaceFilter
        $program = @(ConvertTo-KillswitchList -Value $application.Program)
        [ordered]@{
            name = [string]$Rule.Name
            display_name = [string]$Rule.DisplayName
            description = [string]$Rule.Description
            group = [string]$Rule.Group
            direction = [string]$Rule.Direction
            action = [string]$Rule.Action
            enabled = ([string]$Rule.Enabled -eq 'True')
            protocol = $(if ($port.Protocol) { [string]$port.Protocol } else { 'Any' })
            local_ports = @(ConvertTo-KillswitchList -Value $port.LocalPort)
            remote_ports = @(ConvertTo-KillswitchList -Value $port.RemotePort)
            icmp_types = @(ConvertTo-KillswitchList -Value $port.IcmpType)
            local_addresses = @(ConvertTo-KillswitchList -Value $address.LocalAddress)
            remote_addresses = @(ConvertTo-KillswitchList -Value $address.RemoteAddress)
            program = $(if ($program.Count -gt 0) { $program[0] } else { $null })
            interface_aliases = @(ConvertTo-KillswitchList -Value $interface.InterfaceAlias)
        }
    }

    function Restore-KillswitchRule {
        param($Record)
        $params = @{
            Name = [string]$Record.name
            DisplayName = [string]$Record.display_name
            Description = [string]$Record.description
            Group = [string]$Record.group
            Direction = [string]$Record.direction
            Action = [string]$Record.action
            Protocol = [string]$Record.protocol
            Enabled = $(if ($Record.enabled) { 'True' } else { 'False' })
            ErrorAction = 'Stop'
        }
        $lists = @{
            LocalPort = 'local_ports'
            RemotePort = 'remote_ports'
            IcmpType = 'icmp_types'
            LocalAddress = 'local_addresses'
            RemoteAddress = 'remote_addresses'
            InterfaceAlias = 'interface_aliases'
        }
        foreach ($param in $lists.Keys) {
            $values = @(ConvertTo-KillswitchList -Value $Record.($lists[$param]))
            if ($values.Count -gt 0) {
                $params[$param] = $values
            }
        }
        if ($Record.program) {
            $params.Program = [string]$Record.program
        }
        New-NetFirewallRule @params | Out-Null
    }

    function Get-KillswitchSnapshot {
        # What an apply may change, as it is before the apply: the profiles, every rule of the groups it touches, the
        # third-party rules it will disable that are enabled now, and the state files the guard reads.
        param([string[]]$Groups, [string[]]$DisableRules, [string]$StateDir)
        $rules = foreach ($group in $Groups) {
            foreach ($rule in (Get-KillswitchGroupRule -Group $group)) {
                Get-KillswitchRuleRecord -Rule $rule
            }
        }
        $enabled = foreach ($name in $DisableRules) {
            $other = Get-NetFirewallRule -Name $name -ErrorAction SilentlyContinue
            if ($null -ne $other -and [string]$other.Enabled -eq 'True') {
                $name
            }
        }
        $files = [ordered]@{}
        foreach ($name in $KillswitchRollbackFiles) {
            $path = Join-Path -Path $StateDir -ChildPath $name
            $files[$name] = $(if (Test-Path -LiteralPath $path -PathType Leaf) { [System.IO.File]::ReadAllText($path) } else { $null })
        }
        [ordered]@{
            status = 'pending'
            time = (Get-Date).ToUniversalTime().ToString('o')
            groups = @($Groups)
            profiles = Get-KillswitchProfileState
            rules = @($rules)
            enabled_rules = @($enabled)
            files = $files
        }
    }

    function Invoke-KillswitchRollback {
        # Run by the rollback task. Under the lock (the module, a confirmation or a guard pass may hold it) and only
        # while the snapshot is pending: a confirmation that took the lock first removed it. Order: the state files
        # first, so the guard (which cannot run while this holds the lock) re-asserts the previous policy afterwards,
        # never the unconfirmed one, and finishes the restore if it stops half way; then the groups' rules (removed,
        # then the previous ones made again), the third-party rules the apply disabled, the profiles last.
        param([string]$StateDir)
        # Bounded: a module run holds the lock at most until its own bound, a guard pass briefly.
        $lock = $null
        $tries = 0
        while ($null -eq $lock -and $tries -lt 5) {
            $lock = Enter-KillswitchLock -TimeoutSeconds $KillswitchModuleLockSeconds
            $tries++
        }
        if ($null -eq $lock) {
            throw ('the lock {0} was not free for {1} s: nothing was rolled back' -f $KillswitchMutexName, (5 * $KillswitchModuleLockSeconds))
        }
        $snapshotPath = Join-Path -Path $StateDir -ChildPath 'rollback.json'
        try {
            if (-not (Test-Path -LiteralPath $snapshotPath -PathType Leaf)) {
                return  # confirmed, or removed by state=absent
            }
            $snapshot = Get-Content -LiteralPath $snapshotPath -Raw | ConvertFrom-Json
            if ([string]$snapshot.status -ne 'pending') {
                return
            }
            try {
                foreach ($name in $KillswitchRollbackFiles) {
                    $file = Join-Path -Path $StateDir -ChildPath $name
                    $text = $snapshot.files.$name
                    if ($null -eq $text) {
                        if (Test-Path -LiteralPath $file -PathType Leaf) {
                            Remove-Item -LiteralPath $file -Force
                        }
                    }
                    else {
                        Write-KillswitchFile -Path $file -Text ([string]$text)
                    }
                }
                foreach ($group in @(ConvertTo-KillswitchList -Value $snapshot.groups)) {
                    foreach ($rule in (Get-KillswitchGroupRule -Group $group)) {
                        Remove-NetFirewallRule -Name $rule.Name -ErrorAction Stop
                    }
                }
                foreach ($record in @($snapshot.rules | Where-Object { $null -ne $_ })) {
                    Restore-KillswitchRule -Record $record
                }
                foreach ($name in @(ConvertTo-KillswitchList -Value $snapshot.enabled_rules)) {
                    Enable-NetFirewallRule -Name $name -ErrorAction Stop
                }
                foreach ($name in $KillswitchProfileNames) {
                    $was = $snapshot.profiles.$name
                    if ($null -ne $was) {
                        Set-NetFirewallProfile -Name $name -Enabled $(if ($was.enabled) { 'True' } else { 'False' }) `
                            -DefaultInboundAction ([string]$was.default_inbound) -DefaultOutboundAction ([string]$was.default_outbound) -ErrorAction Stop
                    }
                }
                $outcome = 'rolled back'
            }
            catch {
                $outcome = 'rollback failed: {0}' -f $_.Exception.Message
            }
            $done = [ordered]@{ status = $outcome; time = (Get-Date).ToUniversalTime().ToString('o') }
            Write-KillswitchFile -Path $snapshotPath -Text ($done | ConvertTo-Json)
            $message = 'netlock.killswitch: the controller did not confirm the apply in time: ' + $outcome
            [System.Diagnostics.EventLog]::WriteEntry($KillswitchEventSource, $message, [System.Diagnostics.EventLogEntryType]::Error, 1002)
            Unregister-ScheduledTask -TaskName $KillswitchRollbackTaskName -Confirm:$false -ErrorAction SilentlyContinue
        }
        finally {
            Exit-KillswitchLock -Mutex $lock
        }
    }
}

. $killswitchFunctions

# How long absent waits for a stopped guard task to end.
$KillswitchGuardStopSeconds = 60
# The state directory is the module's only with this file in it; absent removes these files and nothing else.
$KillswitchStateMarker = '.netlock-killswitch'
$KillswitchStateFiles = @('policy.json', 'recorded.json', 'status.json', 'guard.ps1', 'rollback.json', 'rollback.ps1', $KillswitchStateMarker)

function Get-KillswitchJson {
    param([string]$Path)
    if (Test-Path -LiteralPath $Path -PathType Leaf) {
        Get-Content -LiteralPath $Path -Raw | ConvertFrom-Json
    }
}

function Get-KillswitchRecord {
    # recorded.json as plain dictionaries (not the objects ConvertFrom-Json makes), so it can be returned as it is.
    param([string]$StateDir)
    $raw = Get-KillswitchJson -Path (Join-Path -Path $StateDir -ChildPath 'recorded.json')
    if ($null -eq $raw) {
        return $null
    }
    $profiles = [ordered]@{}
    foreach ($name in $KillswitchProfileNames) {
        $one = $null
        if ($null -ne $raw.profiles) {
            $one = $raw.profiles.$name
        }
        if ($null -ne $one) {
            $profiles[$name] = [ordered]@{
                enabled = [bool]$one.enabled
                default_inbound = [string]$one.default_inbound
                default_outbound = [string]$one.default_outbound
            }
        }
    }
    [ordered]@{ profiles = $profiles; disabled_rules = @(ConvertTo-KillswitchList -Value $raw.disabled_rules) }
}

function Get-KillswitchGuardAction {
    # The one command line the guard task runs: the module registers it, and a task running anything else is no guard.
    param([string]$ScriptPath)
    'powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -File "{0}"' -f $ScriptPath
}

function Get-KillswitchGuardState {
    # The task as it is: whether it exists, its state (Ready, Running, Disabled, ...), what it runs, and whether that is
    # this state directory's guard.ps1. It guards only when it exists, is not Disabled and runs guard.ps1.
    param([string]$StateDir)
    $task = Get-ScheduledTask -TaskName $KillswitchTaskName -ErrorAction SilentlyContinue
    if ($null -eq $task) {
        return [ordered]@{ task = $false; state = $null; runs_guard = $false; action = $null; interval = 0 }
    }
    $interval = 0
    if ([string]$task.Description -match 'interval=(\d+)') {
        $interval = [int]$Matches[1]
    }
    $commands = @($task.Actions | ForEach-Object { ('{0} {1}' -f $_.Execute, $_.Arguments).Trim() })
    $expected = Get-KillswitchGuardAction -ScriptPath (Join-Path -Path $StateDir -ChildPath 'guard.ps1')
    [ordered]@{
        task = $true
        state = [string]$task.State
        runs_guard = ($commands.Count -eq 1 -and $commands[0] -eq $expected)
        action = ($commands -join '; ')
        interval = $interval
    }
}

function Get-KillswitchForwardingFeature {
    # Traffic these features forward for their guests passes the host's virtual switch or NAT, not Windows Firewall.
    $features = [System.Collections.Generic.List[string]]@()
    $services = [ordered]@{
        'Hyper-V' = @('vmms')
        'WSL' = @('WslService', 'LxssManager')
        'Windows Sandbox' = @('CmService')
        'Host Compute Service (containers)' = @('vmcompute')
    }
    foreach ($feature in $services.Keys) {
        if (@(Get-Service -Name $services[$feature] -ErrorAction SilentlyContinue).Count -gt 0) {
            $features.Add($feature)
        }
    }
    $features
}

function Get-KillswitchThirdParty {
    param([string]$Group)
    # The effective rules (ActiveStore: local and group policy), with their filters fetched once, not per rule.
    $store = @{ PolicyStore = 'ActiveStore'; ErrorAction = 'SilentlyContinue' }
    $rules = @(Get-NetFirewallRule @store -Enabled True -Direction Outbound -Action Allow | Where-Object { [string]$_.Group -notlike $Group })
    if ($rules.Count -eq 0) {
        return
    }
    $filters = @{}
    foreach ($kind in @('Address', 'Port', 'Application', 'Interface', 'InterfaceType')) {
        $filters[$kind] = @{}
    }
    Get-NetFirewallAddressFilter @store | ForEach-Object { $filters.Address[[string]$_.InstanceID] = $_ }
    Get-NetFirewallPortFilter @store | ForEach-Object { $filters.Port[[string]$_.InstanceID] = $_ }
    Get-NetFirewallApplicationFilter @store | ForEach-Object { $filters.Application[[string]$_.InstanceID] = $_ }
    Get-NetFirewallInterfaceFilter @store | ForEach-Object { $filters.Interface[[string]$_.InstanceID] = $_ }
    Get-NetFirewallInterfaceTypeFilter @store | ForEach-Object { $filters.InterfaceType[[string]$_.InstanceID] = $_ }
    $listed = foreach ($rule in $rules) {
        $id = [string]$rule.InstanceID
        $program = @(ConvertTo-KillswitchList -Value $filters.Application[$id].Program)
        $protocol = [string]$filters.Port[$id].Protocol
        [ordered]@{
            name = [string]$rule.Name
            display_name = [string]$rule.DisplayName
            group = [string]$rule.Group
            direction = [string]$rule.Direction
            action = [string]$rule.Action
            enabled = ([string]$rule.Enabled -eq 'True')
            program = $(if ($program.Count -gt 0) { $program[0] } else { $null })
            protocol = $(if ($protocol) { $protocol } else { 'Any' })
            remote_addresses = @(ConvertTo-KillswitchList -Value $filters.Address[$id].RemoteAddress)
            remote_ports = @(ConvertTo-KillswitchList -Value $filters.Port[$id].RemotePort)
            interface_aliases = @(ConvertTo-KillswitchList -Value $filters.Interface[$id].InterfaceAlias)
            interface_type = $(if ($filters.InterfaceType[$id]) { [string]$filters.InterfaceType[$id].InterfaceType } else { 'Any' })
        }
    }
    $listed
}

function Get-KillswitchLive {
    param([string]$Group, [string]$StateDir)
    # With their filters: the controller judges a rule edited in place, its Description kept, as the module does.
    $rules = foreach ($rule in (Get-KillswitchGroupRule -Group $Group | Sort-Object -Property Name)) {
        Get-KillswitchRuleRecord -Rule $rule
    }
    [ordered]@{
        profiles = Get-KillswitchProfileState
        rules = @($rules)
        third_party = @(Get-KillswitchThirdParty -Group $Group)
        interfaces = @(Get-NetAdapter -IncludeHidden -ErrorAction SilentlyContinue | ForEach-Object { [string]$_.Name } | Sort-Object -Unique)
        forwarding_features = @(Get-KillswitchForwardingFeature)
        recorded = Get-KillswitchRecord -StateDir $StateDir
        guard = Get-KillswitchGuardState -StateDir $StateDir
    }
}

function Get-KillswitchPredicted {
    # What check mode expects after a change: the wanted profiles and the desired rules, everything else as it is.
    param($Before, $Document, $Plan)
    $predicted = [ordered]@{}
    foreach ($key in $Before.Keys) {
        $predicted[$key] = $Before[$key]
    }
    $profiles = [ordered]@{}
    foreach ($name in $Before.profiles.Keys) {
        $profiles[$name] = $Before.profiles[$name]
        if (@($Document.profiles.names) -contains $name) {
            $profiles[$name] = [ordered]@{
                enabled = [bool]$Document.profiles.enabled
                default_inbound = [string]$Document.profiles.default_inbound
                default_outbound = [string]$Document.profiles.default_outbound
            }
        }
    }
    $predicted.profiles = $profiles
    $predicted.rules = @($Plan.desired | Sort-Object -Property { [string]$_.rule.name } | ForEach-Object {
            [ordered]@{
                name = [string]$_.rule.name
                display_name = [string]$_.rule.display_name
                direction = [string]$_.rule.direction
                enabled = $_.enabled
                description = $_.description
            }
        })
    $predicted
}

function Get-KillswitchPredictedAbsent {
    # What check mode expects after a removal: no rules, no guard, no record, the recorded profile defaults back.
    param($Before)
    $predicted = [ordered]@{}
    foreach ($key in $Before.Keys) {
        $predicted[$key] = $Before[$key]
    }
    $profiles = [ordered]@{}
    foreach ($name in $Before.profiles.Keys) {
        $profiles[$name] = $Before.profiles[$name]
        if ($null -ne $Before.recorded -and $null -ne $Before.recorded.profiles.$name) {
            $was = $Before.recorded.profiles.$name
            $profiles[$name] = [ordered]@{
                enabled = [bool]$was.enabled
                default_inbound = [string]$was.default_inbound
                default_outbound = [string]$was.default_outbound
            }
        }
    }
    $predicted.profiles = $profiles
    $predicted.rules = @()
    $predicted.recorded = $null
    $predicted.guard = [ordered]@{ task = $false; state = $null; runs_guard = $false; action = $null; interval = 0 }
    $predicted
}

function Get-KillswitchStateDirProblem {
    # The module writes its files, and an ACL of its own, only into a directory it made: a new or empty one, or one
    # with its marker file. $null when the directory is fine.
    param([string]$Path)
    if (-not (Test-Path -LiteralPath $Path)) {
        return $null
    }
    if (-not (Test-Path -LiteralPath $Path -PathType Container)) {
        return "state_dir $Path exists and is not a directory"
    }
    if (Test-Path -LiteralPath (Join-Path -Path $Path -ChildPath $KillswitchStateMarker) -PathType Leaf) {
        return $null
    }
    if (@(Get-ChildItem -LiteralPath $Path -Force).Count -gt 0) {
        return ("state_dir $Path is not empty and has no $KillswitchStateMarker file, so this module did not make it; " +
            "it changes the ACL of its state directory and removes its files there: set killswitch_windows_state_dir " +
            "to a new or empty directory")
    }
    $null
}

function Set-KillswitchStateDir {
    param([string]$Path)
    # The guard runs guard.ps1 from here as SYSTEM: only SYSTEM and Administrators may write it. The marker, written
    # first, makes the directory the module's.
    New-Item -Path $Path -ItemType Directory -Force | Out-Null
    $marker = Join-Path -Path $Path -ChildPath $KillswitchStateMarker
    if (-not (Test-Path -LiteralPath $marker -PathType Leaf)) {
        Write-KillswitchFile -Path $marker -Text "netlock.killswitch state directory: killswitch_windows_firewall state=absent removes it`r`n"
    }
    $acl = New-Object -TypeName System.Security.AccessControl.DirectorySecurity
    $acl.SetAccessRuleProtection($true, $false)
    foreach ($sid in @('S-1-5-18', 'S-1-5-32-544')) {
        $identity = New-Object -TypeName System.Security.Principal.SecurityIdentifier -ArgumentList $sid
        $inherit = [System.Security.AccessControl.InheritanceFlags]'ContainerInherit, ObjectInherit'
        $propagate = [System.Security.AccessControl.PropagationFlags]::None
        $rule = New-Object -TypeName System.Security.AccessControl.FileSystemAccessRule -ArgumentList $identity, 'FullControl', $inherit, $propagate, 'Allow'
        $acl.AddAccessRule($rule)
    }
    Set-Acl -LiteralPath $Path -AclObject $acl
}

function Get-KillswitchGuardScript {
    param([string]$StateDir, [int]$Interval)
    # Task Scheduler repeats at most once a minute: a shorter interval becomes several passes within each run.
    $passes = [Math]::Max(1, [Math]::Floor(60 / [Math]::Max(1, $Interval)))
    $lines = @(
        '# netlock.killswitch guard: written by the killswitch_windows_firewall module; do not edit.'
        '# Re-asserts policy.json (profiles, the rule group, disabled third-party rules) as the module does.'
        '$ErrorActionPreference = ''Stop'''
        $killswitchFunctions.ToString()
        ('$stateDir = ''{0}''' -f $StateDir.Replace("'", "''"))
        ('foreach ($pass in 1..{0}) {{' -f $passes)
        '    Invoke-KillswitchGuardPass -StateDir $stateDir | Out-Null'
        ('    if ($pass -lt {0}) {{' -f $passes)
        ('        Start-Sleep -Seconds {0}' -f [Math]::Max(1, $Interval))
        '    }'
        '}'
    )
    ($lines -join "`r`n") + "`r`n"
}

function Install-KillswitchGuard {
    param([string]$StateDir, [int]$Interval, [string]$ScriptPath, [bool]$CheckMode, $Actions)
    $minutes = [Math]::Max(1, [Math]::Ceiling($Interval / 60))
    $signature = 'netlock.killswitch guard interval={0} repeat={1}m script={2}' -f $Interval, $minutes, $ScriptPath
    # Kept only when it guards (exists, not Disabled, runs this guard.ps1) with this interval; else registered again.
    $task = Get-ScheduledTask -TaskName $KillswitchTaskName -ErrorAction SilentlyContinue
    $guard = Get-KillswitchGuardState -StateDir $StateDir
    if ($null -ne $task -and [string]$task.Description -ceq $signature -and $guard.state -ne 'Disabled' -and $guard.runs_guard) {
        return
    }
    $why = $(if (-not $guard.task) { '' } elseif ($guard.state -eq 'Disabled') { ', it was disabled' }
        elseif (-not $guard.runs_guard) { ", it ran $($guard.action)" } else { ', its settings differed' })
    $Actions.Add("register task $KillswitchTaskName (every $Interval s, at startup, on network and firewall changes$why)")
    if ($CheckMode) {
        return
    }
    if (-not [System.Diagnostics.EventLog]::SourceExists($KillswitchEventSource)) {
        [System.Diagnostics.EventLog]::CreateEventSource($KillswitchEventSource, 'Application')
    }
    $execute, $argument = (Get-KillswitchGuardAction -ScriptPath $ScriptPath) -split ' ', 2
    $action = New-ScheduledTaskAction -Execute $execute -Argument $argument
    $repeat = New-ScheduledTaskTrigger -Once -At (Get-Date) -RepetitionInterval (New-TimeSpan -Minutes $minutes)
    $startup = New-ScheduledTaskTrigger -AtStartup
    $eventClass = Get-CimClass -ClassName MSFT_TaskEventTrigger -Namespace 'Root/Microsoft/Windows/TaskScheduler'
    $events = @(
        @{ log = 'Microsoft-Windows-NetworkProfile/Operational'; ids = '10000,10001' }
        @{ log = 'Microsoft-Windows-Windows Firewall With Advanced Security/Firewall'; ids = '2003,2004,2005,2006,2052,2097,2099' }
    )
    $triggers = @($repeat, $startup)
    foreach ($source in $events) {
        $select = (($source.ids -split ',') | ForEach-Object { "EventID=$_" }) -join ' or '
        $trigger = New-CimInstance -CimClass $eventClass -ClientOnly
        $trigger.Enabled = $true
        $trigger.Subscription = ('<QueryList><Query Id="0" Path="{0}"><Select Path="{0}">*[System[({1})]]</Select></Query></QueryList>' -f
            $source.log, $select)
        $triggers += $trigger
    }
    $principal = New-ScheduledTaskPrincipal -UserId 'SYSTEM' -LogonType ServiceAccount -RunLevel Highest
    $settings = New-ScheduledTaskSettingsSet -MultipleInstances IgnoreNew -StartWhenAvailable -AllowStartIfOnBatteries `
        -DontStopIfGoingOnBatteries -ExecutionTimeLimit (New-TimeSpan -Minutes 10)
    Register-ScheduledTask -TaskName $KillswitchTaskName -Description $signature -Action $action -Trigger $triggers `
        -Principal $principal -Settings $settings -Force | Out-Null
}

function Remove-KillswitchGuard {
    # Disabled (no trigger starts it again), its running instance stopped and waited for, then unregistered, all
    # before the caller touches a rule: an instance left running would put back what absent removes. The module
    # holds the lock here, so that instance is between passes or waiting for the lock, never mid-reconcile.
    param([bool]$CheckMode, $Actions)
    if ($null -eq (Get-ScheduledTask -TaskName $KillswitchTaskName -ErrorAction SilentlyContinue)) {
        return
    }
    $Actions.Add("unregister task $KillswitchTaskName")
    if ($CheckMode) {
        return
    }
    Disable-ScheduledTask -TaskName $KillswitchTaskName -ErrorAction Stop | Out-Null
    Stop-ScheduledTask -TaskName $KillswitchTaskName -ErrorAction SilentlyContinue  # not running: nothing to stop; the wait below judges
    $deadline = (Get-Date).AddSeconds($KillswitchGuardStopSeconds)
    while ([string](Get-ScheduledTask -TaskName $KillswitchTaskName -ErrorAction Stop).State -eq 'Running') {
        if ((Get-Date) -gt $deadline) {
            $stuck = ("the guard task {0} still runs {1} s after Stop-ScheduledTask; it is disabled, no rule was changed: " +
                "end it in Task Scheduler and run again") -f $KillswitchTaskName, $KillswitchGuardStopSeconds
            throw $stuck
        }
        Start-Sleep -Milliseconds 500
    }
    Unregister-ScheduledTask -TaskName $KillswitchTaskName -Confirm:$false -ErrorAction Stop
}

function Get-KillswitchRollbackScript {
    param([string]$StateDir)
    $lines = @(
        '# netlock.killswitch rollback: written by the killswitch_windows_firewall module; do not edit.'
        '# Restores rollback.json (the state before an unconfirmed apply) unless the controller confirmed.'
        '$ErrorActionPreference = ''Stop'''
        $killswitchFunctions.ToString()
        ('$stateDir = ''{0}''' -f $StateDir.Replace("'", "''"))
        'Invoke-KillswitchRollback -StateDir $stateDir'
    )
    ($lines -join "`r`n") + "`r`n"
}

function Register-KillswitchRollback {
    # Before anything changes: the snapshot, then the one-shot task that restores it at now+timeout. A snapshot still
    # pending (an earlier apply was never confirmed) is kept, so a rollback lands on the last confirmed state; the
    # groups and third-party rules of this apply are added to it.
    param([string]$StateDir, [int]$Timeout, [string[]]$Groups, [string[]]$DisableRules, $Actions)
    $snapshotPath = Join-Path -Path $StateDir -ChildPath 'rollback.json'
    $scriptPath = Join-Path -Path $StateDir -ChildPath 'rollback.ps1'
    $snapshot = Get-KillswitchSnapshot -Groups $Groups -DisableRules $DisableRules -StateDir $StateDir
    $pending = Get-KillswitchJson -Path $snapshotPath
    if ($null -ne $pending -and [string]$pending.status -eq 'pending') {
        $snapshot.time = [string]$pending.time
        $snapshot.profiles = $pending.profiles
        $snapshot.rules = @($pending.rules | Where-Object { $null -ne $_ })
        $snapshot.files = $pending.files
        $snapshot.groups = @(@(ConvertTo-KillswitchList -Value $pending.groups) + $Groups | Sort-Object -Unique)
        $snapshot.enabled_rules = @(@(ConvertTo-KillswitchList -Value $pending.enabled_rules) + @($snapshot.enabled_rules) |
                Where-Object { $_ } | Sort-Object -Unique)
    }
    $at = (Get-Date).AddSeconds($Timeout)
    Set-KillswitchStateDir -Path $StateDir
    Write-KillswitchFile -Path $snapshotPath -Text ($snapshot | ConvertTo-Json -Depth 10)
    Write-KillswitchFile -Path $scriptPath -Text (Get-KillswitchRollbackScript -StateDir $StateDir)
    if (-not [System.Diagnostics.EventLog]::SourceExists($KillswitchEventSource)) {
        [System.Diagnostics.EventLog]::CreateEventSource($KillswitchEventSource, 'Application')
    }
    $execute, $argument = (Get-KillswitchGuardAction -ScriptPath $scriptPath) -split ' ', 2
    $action = New-ScheduledTaskAction -Execute $execute -Argument $argument
    $trigger = New-ScheduledTaskTrigger -Once -At $at
    $principal = New-ScheduledTaskPrincipal -UserId 'SYSTEM' -LogonType ServiceAccount -RunLevel Highest
    # StartWhenAvailable: a host that was off at the time rolls back when it is up again.
    $settings = New-ScheduledTaskSettingsSet -StartWhenAvailable -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries `
        -ExecutionTimeLimit (New-TimeSpan -Minutes 10)
    $description = 'netlock.killswitch rollback: restores {0} unless the controller confirms' -f $snapshotPath
    Register-ScheduledTask -TaskName $KillswitchRollbackTaskName -Description $description -Action $action -Trigger $trigger `
        -Principal $principal -Settings $settings -Force | Out-Null
    $Actions.Add("arm task $KillswitchRollbackTaskName (restores $snapshotPath in $Timeout s unless confirmed)")
    [ordered]@{
        timeout = $Timeout
        task = $KillswitchRollbackTaskName
        snapshot = $snapshotPath
        at = $at.ToUniversalTime().ToString('o')
        since = [string]$snapshot.time
        status = 'pending'
    }
}

function Remove-KillswitchRollback {
    # The rollback task (disabled first, so no trigger starts it) and its files. Under the lock: an instance already
    # started waits for the lock and then finds no snapshot.
    param([string]$StateDir, [bool]$CheckMode, $Actions)
    if ($null -ne (Get-ScheduledTask -TaskName $KillswitchRollbackTaskName -ErrorAction SilentlyContinue)) {
        $Actions.Add("unregister task $KillswitchRollbackTaskName")
        if (-not $CheckMode) {
            Disable-ScheduledTask -TaskName $KillswitchRollbackTaskName -ErrorAction Stop | Out-Null
            Unregister-ScheduledTask -TaskName $KillswitchRollbackTaskName -Confirm:$false -ErrorAction Stop
        }
    }
    foreach ($name in @('rollback.json', 'rollback.ps1')) {
        $file = Join-Path -Path $StateDir -ChildPath $name
        if (Test-Path -LiteralPath $file -PathType Leaf) {
            $Actions.Add("remove $file")
            if (-not $CheckMode) {
                Remove-Item -LiteralPath $file -Force
            }
        }
    }
}

function Invoke-KillswitchConfirm {
    # What the controller runs over a new connection after an armed apply: a pending snapshot becomes 'confirmed'
    # (task and snapshot removed); a rollback that already ran is reported as it ended.
    param([string]$StateDir, [bool]$CheckMode)
    $actions = [System.Collections.Generic.List[string]]@()
    $snapshot = Get-KillswitchJson -Path (Join-Path -Path $StateDir -ChildPath 'rollback.json')
    $status = $(if ($null -eq $snapshot) { 'none' } elseif ([string]$snapshot.status -eq 'pending') { 'confirmed' } else { [string]$snapshot.status })
    Remove-KillswitchRollback -StateDir $StateDir -CheckMode $CheckMode -Actions $actions
    @{ actions = @($actions); unresolved = @(); rollback = [ordered]@{ status = $status } }
}

function Invoke-KillswitchPresent {
    param($Document, [string[]]$DisableRules, [string]$StateDir, [bool]$GuardEnabled, [int]$GuardInterval, [bool]$CheckMode)
    $recordedPath = Join-Path -Path $StateDir -ChildPath 'recorded.json'
    $policyPath = Join-Path -Path $StateDir -ChildPath 'policy.json'
    $guardPath = Join-Path -Path $StateDir -ChildPath 'guard.ps1'
    $disable = @(ConvertTo-KillswitchList -Value $DisableRules | Sort-Object -Unique)
    $actions = [System.Collections.Generic.List[string]]@()

    # The profile defaults as the host had them, once: never overwritten while the record exists, so absent
    # restores the host's own and not our Block.
    $recorded = Get-KillswitchRecord -StateDir $StateDir
    $record = [ordered]@{ profiles = $null; disabled_rules = @() }
    if ($null -ne $recorded) {
        $record.profiles = $recorded.profiles
        $record.disabled_rules = @(ConvertTo-KillswitchList -Value $recorded.disabled_rules)
    }
    else {
        $record.profiles = Get-KillswitchProfileState
        $actions.Add("record profile defaults in $recordedPath")
    }
    $newlyDisabled = @(foreach ($name in $disable) {
            $other = Get-NetFirewallRule -Name $name -ErrorAction SilentlyContinue
            if ($null -ne $other -and [string]$other.Enabled -eq 'True' -and $record.disabled_rules -notcontains $name) {
                $name
            }
        })
    $record.disabled_rules = @(@($record.disabled_rules) + $newlyDisabled | Sort-Object -Unique)
    if (-not $CheckMode) {
        Set-KillswitchStateDir -Path $StateDir
        if ($null -eq $recorded -or $newlyDisabled.Count -gt 0) {
            Write-KillswitchFile -Path $recordedPath -Text ($record | ConvertTo-Json -Depth 5)
        }
    }

    # The guard's copy of the policy, written before the reconcile: a guard pass that follows (the module holds the
    # lock, so none runs during it) re-asserts the new policy, never the old one. Compared by digest and disabled
    # rules, since JSON key order is not stable.
    $stored = Get-KillswitchJson -Path $policyPath
    $sameStored = $null -ne $stored -and [string]$stored.document.digest -ceq [string]$Document.digest -and
    ((@(ConvertTo-KillswitchList -Value $stored.disable_rules) | Sort-Object) -join '|') -ceq (@($disable) -join '|')
    if (-not $sameStored) {
        $actions.Add("write $policyPath")
        if (-not $CheckMode) {
            $policy = [ordered]@{ document = $Document; disable_rules = @($disable) }
            Write-KillswitchFile -Path $policyPath -Text ($policy | ConvertTo-Json -Depth 20)
        }
    }

    $plan = Invoke-KillswitchReconcile -Document $Document -DisableRules $disable -CheckMode $CheckMode
    foreach ($line in $plan.actions) {
        $actions.Add($line)
    }

    if ($GuardEnabled) {
        $script = Get-KillswitchGuardScript -StateDir $StateDir -Interval $GuardInterval
        $existing = $null
        if (Test-Path -LiteralPath $guardPath -PathType Leaf) {
            $existing = [System.IO.File]::ReadAllText($guardPath)
        }
        if ($existing -cne $script) {
            $actions.Add("write $guardPath")
            if (-not $CheckMode) {
                Write-KillswitchFile -Path $guardPath -Text $script
            }
        }
        Install-KillswitchGuard -StateDir $StateDir -Interval $GuardInterval -ScriptPath $guardPath -CheckMode $CheckMode -Actions $actions
    }
    else {
        Remove-KillswitchGuard -CheckMode $CheckMode -Actions $actions
    }
    @{ actions = @($actions); unresolved = $plan.unresolved; plan = $plan }
}

function Remove-KillswitchStateDir {
    # Its own files only, the marker last, then the directory if nothing else is in it: never a recursive removal.
    # A directory without the marker is left as it is.
    param([string]$StateDir, [bool]$CheckMode, $Actions, $Warnings)
    if (-not (Test-Path -LiteralPath $StateDir -PathType Container)) {
        return
    }
    $problem = Get-KillswitchStateDirProblem -Path $StateDir
    if ($null -ne $problem) {
        $Warnings.Add("$problem; nothing in it was removed")
        return
    }
    foreach ($name in $KillswitchStateFiles) {
        $file = Join-Path -Path $StateDir -ChildPath $name
        if (Test-Path -LiteralPath $file -PathType Leaf) {
            $Actions.Add("remove $file")
            if (-not $CheckMode) {
                Remove-Item -LiteralPath $file -Force
            }
        }
    }
    $others = @(Get-ChildItem -LiteralPath $StateDir -Force | Where-Object { $KillswitchStateFiles -notcontains $_.Name } |
            ForEach-Object { [string]$_.Name })
    if ($others.Count -gt 0) {
        $Warnings.Add("$StateDir was kept: it holds what this module did not write ($($others -join ', '))")
        return
    }
    $Actions.Add("remove $StateDir")
    if (-not $CheckMode) {
        Remove-Item -LiteralPath $StateDir -Force
    }
}

function Invoke-KillswitchAbsent {
    # The guard goes first (it would put the rules back), the allow rules before the profile defaults (the host is
    # never more open than with the kill switch or without it), the recorded state last.
    param([string]$Group, [string]$StateDir, [bool]$CheckMode)
    $actions = [System.Collections.Generic.List[string]]@()
    $warnings = [System.Collections.Generic.List[string]]@()
    # A rollback firing later would put rules back, as the guard would.
    Remove-KillswitchRollback -StateDir $StateDir -CheckMode $CheckMode -Actions $actions
    Remove-KillswitchGuard -CheckMode $CheckMode -Actions $actions
    foreach ($rule in (Get-KillswitchGroupRule -Group $Group | Sort-Object -Property Name)) {
        $actions.Add("remove $($rule.Name)")
        if (-not $CheckMode) {
            Remove-NetFirewallRule -Name $rule.Name -ErrorAction Stop
        }
    }
    $recorded = Get-KillswitchRecord -StateDir $StateDir
    if ($null -ne $recorded) {
        foreach ($name in @(ConvertTo-KillswitchList -Value $recorded.disabled_rules)) {
            $other = Get-NetFirewallRule -Name $name -ErrorAction SilentlyContinue
            if ($null -ne $other -and [string]$other.Enabled -ne 'True') {
                $actions.Add("enable $name")
                if (-not $CheckMode) {
                    Enable-NetFirewallRule -Name $name -ErrorAction Stop
                }
            }
        }
        $current = Get-KillswitchProfileState
        foreach ($name in $KillswitchProfileNames) {
            $old = $recorded.profiles.$name
            if ($null -eq $old) {
                continue
            }
            $restore = @{}
            $settings = @(
                @('enabled', 'Enabled'), @('default_inbound', 'DefaultInboundAction'), @('default_outbound', 'DefaultOutboundAction')
            )
            foreach ($pair in $settings) {
                $was = $old.($pair[0])
                if ([string]$was -ne [string]$current[$name][$pair[0]]) {
                    $actions.Add(('profiles {0}: {1} {2} -> {3}' -f $name, ($pair[0] -replace '_', ' '), $current[$name][$pair[0]], $was))
                    $restore[$pair[1]] = $(if ($pair[0] -eq 'enabled') { $(if ($was) { 'True' } else { 'False' }) } else { [string]$was })
                }
            }
            if ($restore.Count -gt 0 -and -not $CheckMode) {
                Set-NetFirewallProfile -Name $name @restore -ErrorAction Stop
            }
        }
    }
    if ([System.Diagnostics.EventLog]::SourceExists($KillswitchEventSource)) {
        $actions.Add("remove event source $KillswitchEventSource")
        if (-not $CheckMode) {
            [System.Diagnostics.EventLog]::DeleteEventSource($KillswitchEventSource)
        }
    }
    Remove-KillswitchStateDir -StateDir $StateDir -CheckMode $CheckMode -Actions $actions -Warnings $warnings
    @{ actions = @($actions); unresolved = @(); warnings = @($warnings) }
}

$state = $module.Params.state
$stateDir = $module.Params.state_dir
$document = $module.Params.document
$checkMode = $module.CheckMode
$stored = Get-KillswitchJson -Path (Join-Path -Path $stateDir -ChildPath 'policy.json')
$group = 'netlock.killswitch *'
if ($null -ne $document) {
    $group = [string]$document.group
}
elseif ($null -ne $stored) {
    $group = [string]$stored.document.group
}

# present and absent (check mode too: it reads what a guard pass may be changing) hold the lock from the first read
# to the last change; query reads only.
$lock = $null
if ($state -ne 'query') {
    $lock = Enter-KillswitchLock -TimeoutSeconds $KillswitchModuleLockSeconds
    if ($null -eq $lock) {
        # Formatted first: in a method call a comma separates arguments.
        $busy = ("the lock {0} was not free within {1} s (another run of this module, or a guard pass of the task {2}, " +
            "holds it); nothing was changed: run again") -f $KillswitchMutexName, $KillswitchModuleLockSeconds, $KillswitchTaskName
        $module.FailJson($busy)
    }
}
try {
    if ($state -eq 'confirm') {
        # Only the confirmation, nothing read that could delay it: the rollback is due at a fixed time.
        $outcome = Invoke-KillswitchConfirm -StateDir $stateDir -CheckMode $checkMode
        $module.Result.actions = @($outcome.actions)
        $module.Result.unresolved = @()
        $module.Result.rollback = $outcome.rollback
        $module.Result.changed = ($outcome.actions.Count -gt 0)
    }
    else {
        if ($state -eq 'present') {
            $stateDirProblem = Get-KillswitchStateDirProblem -Path $stateDir
            if ($null -ne $stateDirProblem) {
                $module.FailJson($stateDirProblem)
            }
        }
        $before = Get-KillswitchLive -Group $group -StateDir $stateDir
        $module.Result.before = $before
        $module.Result.actions = @()
        $module.Result.unresolved = @()
        $module.Result.live = $before
        if ($state -eq 'present') {
            $presentArgs = @{
                Document = $document
                DisableRules = $module.Params.disable_rules
                StateDir = $stateDir
                GuardEnabled = $module.Params.guard_enabled
                GuardInterval = $module.Params.guard_interval
            }
            $armActions = [System.Collections.Generic.List[string]]@()
            $pendingSnapshot = Get-KillswitchJson -Path (Join-Path -Path $stateDir -ChildPath 'rollback.json')
            $pending = $null -ne $pendingSnapshot -and [string]$pendingSnapshot.status -eq 'pending'
            if ($module.Params.rollback_timeout -gt 0 -and -not $checkMode) {
                # Armed before anything changes, and only when the apply changes something (the plan, in check mode, says)
                # or an earlier apply still awaits its confirmation. Check mode arms nothing.
                $preview = Invoke-KillswitchPresent @presentArgs -CheckMode $true
                if ($preview.actions.Count -gt 0 -or $pending) {
                    # The group policy.json had too: a new killswitch_table leaves the old group's rules to restore.
                    $groups = @([string]$document.group)
                    if ($null -ne $stored) {
                        $groups = @($groups + [string]$stored.document.group | Where-Object { $_ } | Sort-Object -Unique)
                    }
                    $disable = @(ConvertTo-KillswitchList -Value $module.Params.disable_rules | Sort-Object -Unique)
                    $module.Result.rollback = Register-KillswitchRollback -StateDir $stateDir -Timeout $module.Params.rollback_timeout `
                        -Groups $groups -DisableRules $disable -Actions $armActions
                }
            }
            elseif ($module.Params.rollback_timeout -le 0) {
                # 0 disables the safe apply: a rollback an earlier apply left armed is disarmed, as on Linux.
                Remove-KillswitchRollback -StateDir $stateDir -CheckMode $checkMode -Actions $armActions
            }
            $outcome = Invoke-KillswitchPresent @presentArgs -CheckMode $checkMode
            $outcome.actions = @($armActions) + @($outcome.actions)
        }
        elseif ($state -eq 'absent') {
            $outcome = Invoke-KillswitchAbsent -Group $group -StateDir $stateDir -CheckMode $checkMode
        }
        else {
            $outcome = @{ actions = @(); unresolved = @() }
        }
        $module.Result.actions = @($outcome.actions)
        $module.Result.unresolved = @($outcome.unresolved)
        foreach ($text in @($outcome.warnings | Where-Object { $_ })) {
            $module.Warn($text)
        }
        if ($outcome.actions.Count -gt 0) {
            $module.Result.changed = $true
            if ($checkMode -and $state -eq 'present') {
                $module.Result.after = Get-KillswitchPredicted -Before $before -Document $document -Plan $outcome.plan
            }
            elseif ($checkMode) {
                $module.Result.after = Get-KillswitchPredictedAbsent -Before $before
            }
            else {
                $module.Result.after = Get-KillswitchLive -Group $group -StateDir $stateDir
            }
            $module.Result.live = $module.Result.after
        }
    }
}
finally {
    Exit-KillswitchLock -Mutex $lock
}

$module.ExitJson()
